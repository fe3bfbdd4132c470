"""3x3 convolutions with few input or output channels (the generator's conv_img, VGG19's first layer)
run by narrow_conv's kernel: forward and input gradient equal the convolution computed in float64 to
float32 rounding, for widths that are not a multiple of the kernel's 16-pixel vectors, batches, and
channel counts that do not fill its groups of four; the networks' layers take that path, and the
weight gradient is still there."""
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from jspade.models import kept_weights, narrow_conv, winograd
from jspade.runtime import jt

pytestmark = pytest.mark.skipif(not winograd.enabled(), reason="the CPU kernels run where Winograd's oneDNN does")


def conv_f64(x, w):
    """conv2d(x, w, stride 1, zero padding 1) in float64."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = sliding_window_view(xp, (3, 3), axis=(2, 3))  # n, c, h, w, 3, 3
    return np.einsum("nchwij,ocij->nohw", win, w.astype(np.float64))


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


SHAPES = [(1, 16, 3, 9, 40), (2, 3, 64, 7, 16), (1, 64, 3, 5, 3), (3, 1, 1, 4, 17), (1, 4, 5, 6, 33),
          (1, 3, 16, 128, 256), (1, 29, 16, 6, 20), (1, 8, 96, 5, 16)]


@pytest.mark.parametrize("n,ic,oc,h,w", SHAPES)
def test_forward_and_input_gradient_are_the_convolution(n, ic, oc, h, w):
    rng = np.random.default_rng(ic * 100 + oc)
    x = rng.standard_normal((n, ic, h, w)).astype(np.float32)
    weight = rng.standard_normal((oc, ic, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((n, oc, h, w)).astype(np.float32)
    assert narrow_conv.applies(x.shape, oc)
    y = narrow_conv.conv3x3(jt.array(x), jt.array(weight)).numpy()
    assert rel(y, conv_f64(x, weight)) < 1e-6
    # the input gradient is the convolution of dy with the weight transposed and flipped
    dx = narrow_conv.conv3x3(jt.array(dy), jt.array(weight), transposed=True).numpy()
    expected = conv_f64(dy, weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    assert dx.shape == x.shape and rel(dx, expected) < 1e-6


def test_a_moved_weight_is_caught():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 16, 9, 40)).astype(np.float32)
    weight = rng.standard_normal((3, 16, 3, 3)).astype(np.float32)
    moved = weight.copy()
    moved[2, 15, 2, 0] += 0.01  # the last output channel's last input channel, a corner tap
    y = narrow_conv.conv3x3(jt.array(x), jt.array(moved)).numpy()
    assert rel(y, conv_f64(x, weight)) > 1e-4


@pytest.mark.parametrize("ic,oc", [(16, 3), (3, 64)])
def test_layers_of_few_channels_take_this_kernel_with_all_gradients(ic, oc, monkeypatch):
    """winograd.conv2d (every network's 3x3 convolution) sends such a layer here, forward and input
    gradient; the weight and bias gradients are Jittor's convolution's to float32 rounding; a rendering
    keeps no reordered copy of its weight."""
    calls = []
    kernel = narrow_conv.conv3x3
    monkeypatch.setattr(narrow_conv, "conv3x3", lambda *a, **k: calls.append(k.get("transposed", False))
                        or kernel(*a, **k))
    rng = np.random.default_rng(2)
    x = jt.array(rng.standard_normal((2, ic, 12, 20)).astype(np.float32))
    weight = jt.array(rng.standard_normal((oc, ic, 3, 3)).astype(np.float32))
    bias = jt.array(rng.standard_normal(oc).astype(np.float32))
    probe = jt.array(rng.standard_normal((2, oc, 12, 20)).astype(np.float32))
    results = []
    for conv in (winograd.conv2d, jt.nn.conv2d):
        y = conv(x, weight, bias, 1, 1)
        results.append([y.numpy()] + [g.numpy() for g in jt.grad((y * probe).sum(), [x, weight, bias])])
    assert calls == [False, True]
    for name, ours, jittors in zip(("output", "input gradient", "weight gradient", "bias gradient"), *results):
        assert rel(ours, jittors) < 1e-5, name
    with jt.no_grad(), kept_weights.keeping_inference_weights():
        assert winograd.prepare(weight, x.shape, 1, 1) is weight
