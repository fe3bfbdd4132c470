"""The generator's input: one-hot label maps (+ a dontcare channel) (+ instance boundaries),
as the original `Pix2PixModel.preprocess_input` builds them."""
import numpy as np

from jspade.data.labels import label_id_problem
from jspade.models.label_conv import one_hot
from jspade.runtime import jt


def instance_edges(instance):
    """1 where a pixel's instance id differs from a 4-neighbour's (both pixels of each differing
    pair are marked), 0 elsewhere. `instance`: [B,1,H,W] ints. Returns float32 [B,1,H,W]."""
    t = instance
    dw = t[:, :, :, 1:] != t[:, :, :, :-1]
    dh = t[:, :, 1:, :] != t[:, :, :-1, :]
    zw = jt.zeros((t.shape[0], t.shape[1], t.shape[2], 1), dtype="bool")
    zh = jt.zeros((t.shape[0], t.shape[1], 1, t.shape[3]), dtype="bool")
    edge = jt.concat([dw, zw], dim=3) | jt.concat([zw, dw], dim=3)
    edge = edge | jt.concat([dh, zh], dim=2) | jt.concat([zh, dh], dim=2)
    return edge.float32()


def make_semantics(label, num_classes_with_dontcare, instance=None):
    """One-hot of `label` over `label_nc (+1 if dontcare)` channels, with the instance-edge channel
    appended when `instance` is given (the original's `no_instance=False`)."""
    sem = one_hot(label, num_classes_with_dontcare)
    if instance is not None:
        sem = jt.concat([sem, instance_edges(instance)], dim=1)
    return sem


def semantics_for(opt, label, instance=None):
    """`make_semantics` with the channel count and instance use taken from a ModelConfig."""
    return make_semantics(label, opt.num_label_ids, None if opt.no_instance else instance)


def model_label_id_problem(label: np.ndarray, opt):
    """None when every id of a label map (training ids) is one the model takes, else the reason
    (`labels.label_id_problem`'s wording)."""
    n = opt.num_label_ids
    dontcare = f", {opt.label_nc} = dontcare" if opt.contain_dontcare_label else ""
    return label_id_problem(label, (label < 0) | (label >= n), f"this model takes ids 0..{n - 1}{dontcare}")
