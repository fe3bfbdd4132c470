"""The generator's input map: one-hot labels (+ dontcare channel) (+ instance-edge channel, last),
with edges as the original `Pix2PixModel.get_edges` computes them, and label-id validation."""
import numpy as np
import pytest
from PIL import Image

from jspade.config import ModelConfig
from jspade.data.semantics import instance_edges, make_semantics, model_label_id_problem, one_hot, semantics_for
from jspade.runtime import jt


def edges_by_hand(inst):
    """The original's rule, pixel by pixel: a pixel is an edge when any of its 4-neighbours has
    another id (so both pixels of a differing pair are marked). `inst`: [H, W]."""
    h, w = inst.shape
    out = np.zeros((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and inst[yy, xx] != inst[y, x]:
                    out[y, x] = 1
    return out


def edges_by_padding(inst):
    """Vectorised form of the same rule for large maps: replicate-pad, so that a border pixel's
    outside neighbour equals itself and never makes an edge."""
    p = np.pad(inst, 1, mode="edge")
    c = p[1:-1, 1:-1]
    diff = (p[:-2, 1:-1] != c) | (p[2:, 1:-1] != c) | (p[1:-1, :-2] != c) | (p[1:-1, 2:] != c)
    return diff.astype(np.float32)


def coco_opt(**kw):
    # COCO-Stuff: 182 classes, 255 (unlabeled) mapped to id 182 = the dontcare channel, instance edges on.
    return ModelConfig(label_nc=182, contain_dontcare_label=True, no_instance=False, **kw)


HAND_INSTANCE = np.array([[1, 1, 1, 2, 2],
                          [1, 1, 1, 2, 2],
                          [3, 3, 1, 2, 2],
                          [3, 3, 3, 3, 3]], np.int64)
# Written out by hand from the rule (not computed): 1 = a 4-neighbour holds another id.
HAND_EDGES = np.array([[0, 0, 1, 1, 0],
                       [1, 1, 1, 1, 0],
                       [1, 1, 1, 1, 1],
                       [0, 0, 1, 1, 1]], np.float32)


def test_edges_of_a_hand_made_instance_map():
    np.testing.assert_array_equal(edges_by_hand(HAND_INSTANCE), HAND_EDGES)  # the helper itself
    got = instance_edges(jt.array(HAND_INSTANCE[None, None])).numpy()
    assert got.shape == (1, 1, 4, 5) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0, 0], HAND_EDGES)


def test_edges_are_per_sample_and_a_constant_map_has_none():
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 3, (2, 1, 6, 7))
    batch[1] = 5  # constant: no edge at all, including at the border
    got = instance_edges(jt.array(batch)).numpy()
    np.testing.assert_array_equal(got[0, 0], edges_by_hand(batch[0, 0]))
    assert not got[1].any()


def test_edges_of_real_coco_instance_maps(coco_sample):
    paths = sorted(coco_sample.glob("train_inst/*.png"))[:3]
    assert paths, f"no instance maps under {coco_sample}/train_inst"
    for path in paths:
        inst = np.array(Image.open(path)).astype(np.int64)
        assert inst.ndim == 2 and len(np.unique(inst)) > 2
        expected = edges_by_padding(inst)
        if path == paths[0]:  # the slow per-pixel rule once, on a crop, to tie the two numpy forms
            np.testing.assert_array_equal(edges_by_hand(inst[:60, :80]), edges_by_padding(inst[:60, :80]))
        got = instance_edges(jt.array(inst[None, None])).numpy()[0, 0]
        assert 0 < got.mean() < 0.5, path.name
        np.testing.assert_array_equal(got, expected, err_msg=path.name)


def test_semantics_with_dontcare_and_edge_channel_last(coco_sample):
    stem = sorted(coco_sample.glob("train_label/*.png"))[0].stem
    label = np.array(Image.open(coco_sample / "train_label" / f"{stem}.png")).astype(np.int64)
    inst = np.array(Image.open(coco_sample / "train_inst" / f"{stem}.png")).astype(np.int64)
    assert (label == 255).any(), "the sample should hold unlabeled pixels"
    label[label == 255] = 182  # what the COCO loader does: dontcare -> label_nc
    # a crop keeps the 184-channel map small, and still holds dontcare and several classes/instances
    ys, xs = np.nonzero(label == 182)
    y0 = int(np.clip(ys[0] - 40, 0, label.shape[0] - 96))
    x0 = int(np.clip(xs[0] - 60, 0, label.shape[1] - 128))
    label, inst = label[y0:y0 + 96, x0:x0 + 128], inst[y0:y0 + 96, x0:x0 + 128]
    assert (label == 182).any() and len(np.unique(label)) >= 2 and len(np.unique(inst)) >= 2

    opt = coco_opt()
    assert opt.semantic_nc == 184
    assert model_label_id_problem(label, opt) is None  # 182 is the dontcare id: valid when contain_dontcare_label
    sem = semantics_for(opt, jt.array(label[None, None]), jt.array(inst[None, None])).numpy()
    assert sem.shape == (1, 184, 96, 128) and sem.dtype == np.float32

    expected = np.zeros((184, 96, 128), np.float32)
    yy, xx = np.mgrid[:96, :128]
    expected[label, yy, xx] = 1
    expected[183] = edges_by_padding(inst)
    np.testing.assert_array_equal(sem[0], expected)
    assert sem[0, 182].sum() == (label == 182).sum() > 0  # the dontcare channel is the one before the edges

    # without instances (no_instance=True) the instance map is ignored and there is no edge channel
    plain = ModelConfig(label_nc=182, contain_dontcare_label=True, no_instance=True)
    sem2 = semantics_for(plain, jt.array(label[None, None]), jt.array(inst[None, None])).numpy()
    assert sem2.shape[1] == plain.semantic_nc == 183
    np.testing.assert_array_equal(sem2[0], expected[:183])


def test_one_hot_and_make_semantics_small():
    label = np.array([[[[0, 2], [3, 1]]], [[[3, 3], [0, 0]]]], np.int64)  # [2,1,2,2]
    oh = one_hot(jt.array(label), 4).numpy()
    assert oh.shape == (2, 4, 2, 2)
    np.testing.assert_array_equal(oh.argmax(1), label[:, 0])
    np.testing.assert_array_equal(oh.sum(1), np.ones((2, 2, 2)))
    inst = np.array([[[[7, 7], [7, 8]]], [[[1, 1], [1, 1]]]], np.int64)
    sem = make_semantics(jt.array(label), 4, jt.array(inst)).numpy()
    assert sem.shape == (2, 5, 2, 2)
    np.testing.assert_array_equal(sem[:, :4], oh)
    np.testing.assert_array_equal(sem[0, 4], [[0, 1], [1, 1]])
    np.testing.assert_array_equal(sem[1, 4], np.zeros((2, 2)))


def test_label_id_check_names_the_offending_ids():
    opt = coco_opt()
    assert opt.num_label_ids == 183
    assert model_label_id_problem(np.array([[0, 181], [182, 5]]), opt) is None
    assert model_label_id_problem(np.array([[0, 200], [3, 4]]), opt) == (
        "class id(s) [200] out of range (this model takes ids 0..182, 182 = dontcare) in 1 pixel(s)")
    assert "[-1]" in model_label_id_problem(np.array([[-1, 0]]), opt)
    msg = model_label_id_problem(np.array([[254, 183, 0, 255, 255]]), opt)  # every bad id is named once
    assert "[183, 254, 255]" in msg and "in 4 pixel(s)" in msg
    many = model_label_id_problem(np.arange(200, 220)[None], opt)  # at most ten are listed
    assert "[200, 201, 202, 203, 204, 205, 206, 207, 208, 209, ...]" in many and "in 20 pixel(s)" in many
    # without a dontcare channel, id label_nc itself is out of range
    no_dc = ModelConfig(label_nc=182, contain_dontcare_label=False)
    assert no_dc.num_label_ids == 182
    assert "[182]" in model_label_id_problem(np.array([[182]]), no_dc)
