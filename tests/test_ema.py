"""The EMA generator: its update rule and batch-norm recalibration against numpy, and that it is
saved, resumed and loaded for rendering."""
import numpy as np
import pytest
from jittor import nn

from jspade.checkpoint import read_checkpoint, state_arrays
from jspade.inference import load_generator
from jspade.models.normalization import SyncBatchNorm
from jspade.runtime import jt
from jspade.train.ema import ModelEMA, ema_decay_at
from jspade.train.trainer import Trainer

from tiny_models import tiny_config


class ConvBN(nn.Module):
    """1x1 conv -> batch norm: small enough for a numpy reference, called like a generator."""

    def __init__(self):
        self.conv = nn.Conv2d(3, 4, 1)
        self.norm = SyncBatchNorm(4)

    def execute(self, x, z=None):
        return self.norm(self.conv(x))


def numpy_ema(initial, live_sequence, decay):
    average = np.asarray(initial, np.float64)
    for n, live in enumerate(live_sequence):
        d = min(decay, (1 + n) / (10 + n))
        average = d * average + (1 - d) * live
    return average


def test_update_rule_matches_numpy_including_warmup():
    jt.set_global_seed(0)
    live, copy = ConvBN(), ConvBN()
    initial = live.conv.weight.numpy().copy()
    bias0 = live.conv.bias.numpy().copy()
    ema = ModelEMA({"G": live}, {"G": copy}, decay=0.8)
    rng = np.random.default_rng(0)
    sequence = []
    for _ in range(40):  # through the warm-up (d = (1+n)/(10+n) reaches the cap 0.8 at n = 35)
        w = rng.standard_normal(initial.shape).astype(np.float32)
        live.conv.weight.update(jt.array(w))
        live.norm.running_mean.update(jt.array(rng.standard_normal(4).astype(np.float32)))
        sequence.append(w)
        ema.update()
    np.testing.assert_allclose(copy.conv.weight.numpy(), numpy_ema(initial, sequence, 0.8), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(copy.conv.bias.numpy(), bias0, atol=1e-7)  # unchanged live bias: unchanged average
    assert np.all(copy.norm.running_mean.numpy() == 0)  # buffers are not averaged
    assert ema.updates == 40
    assert ema_decay_at(0.95, 0) == pytest.approx(0.1) and ema_decay_at(0.95, 1000) == 0.95


def test_recalibration_sets_running_stats_to_the_mean_of_batch_statistics():
    jt.set_global_seed(1)
    live, copy = ConvBN(), ConvBN()
    ema = ModelEMA({"G": live}, {"G": copy}, decay=0.9)
    copy.norm.running_mean.update(jt.array(np.full(4, 7.0, np.float32)))  # stale values must not survive
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((3, 3, 5, 6)).astype(np.float32) * (i + 1) + i for i in range(5)]
    used = ema.recalibrate((jt.array(b), None) for b in batches)
    assert used == 5
    w = copy.conv.weight.numpy().reshape(4, 3).astype(np.float64)
    b = copy.conv.bias.numpy().astype(np.float64)
    means, variances = [], []
    for x in batches:
        y = np.einsum("oc,nchw->nohw", w, x) + b[None, :, None, None]
        means.append(y.mean(axis=(0, 2, 3)))
        variances.append(y.var(axis=(0, 2, 3), ddof=1))  # PyTorch's running variance is unbiased
    np.testing.assert_allclose(copy.norm.running_mean.numpy(), np.mean(means, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(copy.norm.running_var.numpy(), np.mean(variances, axis=0), rtol=1e-4)
    assert copy.norm.momentum == 0.1 and not copy.is_training()
    # the live network is untouched
    assert np.all(live.norm.running_mean.numpy() == 0) and np.all(live.norm.running_var.numpy() == 1)


def ema_arrays(trainer):
    return {name: state_arrays(net) for name, net in trainer.ema.networks.items()}  # as checkpoints name them


def test_ema_survives_save_and_resume_exactly_and_is_rendered_by_default(tmp_path):
    data = tmp_path / "data"
    opts = dict(ema_decay=0.9, ema_bn_batches=2)
    straight = Trainer(tiny_config(tmp_path / "a", data, max_iters=6, **opts), progress=False)
    straight.train()
    first = Trainer(tiny_config(tmp_path / "b", data, max_iters=3, **opts), progress=False)
    first.train()
    resumed = Trainer(tiny_config(tmp_path / "b", data, max_iters=6, **opts), resume=True, progress=False)
    assert resumed.ema.updates == 3
    resumed.train()

    a, b = ema_arrays(straight), ema_arrays(resumed)
    worst = max((float(np.abs(a["G"][k] - b["G"][k]).max()), k) for k in a["G"])
    assert worst[0] < 1e-5, worst
    payload = read_checkpoint(resumed.run_dir / "checkpoints" / "latest.pkl")
    assert payload["ema_updates"] == 6 and set(payload["ema_networks"]) == {"G"}
    for k, v in b["G"].items():
        np.testing.assert_array_equal(payload["ema_networks"]["G"][k], v)
    # the EMA copy differs from the raw generator, and load_generator picks it unless told otherwise
    raw = payload["networks"]["G"]
    key = "conv_img.weight"
    assert np.abs(raw[key] - payload["ema_networks"]["G"][key]).max() > 1e-6
    model, _ = load_generator(resumed.run_dir)
    np.testing.assert_array_equal(model.netG.state_dict()[key].numpy(), payload["ema_networks"]["G"][key])
    model, _ = load_generator(resumed.run_dir, use_ema=False)
    np.testing.assert_array_equal(model.netG.state_dict()[key].numpy(), raw[key])
