"""label_conv computes the convolution of a one-hot label map from the labels; it must equal the dense
convolution of the one-hot map (forward, weight and bias gradients), tap for tap at the borders."""
import numpy as np
import pytest

from jspade.models.label_conv import label_conv, label_conv_weight_grad, label_ids
from jspade.runtime import jt


def onehot(labels, num_labels):
    return (labels[:, None] == jt.arange(num_labels).reshape(1, num_labels, 1, 1)).float32()


def assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected).max()
    assert err <= 1e-5 * max(np.abs(expected).max(), 1.0), f"{what}: max error {err:.3g}"


def random_case(n, h, w, k, classes=29, channels=16, num_labels=None, seed=0):
    rng = np.random.default_rng(seed)
    labels = jt.array(rng.integers(0, classes, (n, h, w)).astype(np.int32))
    weight = jt.array(rng.standard_normal((channels, num_labels or classes, k, k)).astype(np.float32))
    bias = jt.array(rng.standard_normal(channels).astype(np.float32))
    return rng, labels, weight, bias


SHAPES = [(12, 16, 3, 1), (5, 7, 3, 1), (12, 16, 1, 0), (5, 7, 1, 0)]


@pytest.mark.parametrize("h,w,k,pad", SHAPES)
def test_forward_equals_dense_convolution_of_the_onehot_map(h, w, k, pad):
    _, labels, weight, bias = random_case(2, h, w, k)
    dense = jt.nn.conv2d(onehot(labels, 29), weight, bias, 1, pad)
    assert_close(label_conv(labels, weight, bias, pad).numpy(), dense.numpy(), "with bias")
    assert_close(label_conv(labels, weight, None, pad).numpy(),
                 jt.nn.conv2d(onehot(labels, 29), weight, None, 1, pad).numpy(), "without bias")


@pytest.mark.parametrize("h,w,k,pad", SHAPES)
def test_weight_and_bias_gradients_equal_the_dense_convolutions(h, w, k, pad):
    rng, labels, weight, bias = random_case(2, h, w, k, seed=1)
    probe = jt.array(rng.standard_normal((2, 16, h, w)).astype(np.float32))
    ours = jt.grad((label_conv(labels, weight, bias, pad) * probe).sum(), [weight, bias])
    dense = jt.grad((jt.nn.conv2d(onehot(labels, 29), weight, bias, 1, pad) * probe).sum(), [weight, bias])
    assert_close(ours[0].numpy(), dense[0].numpy(), "weight gradient")
    assert_close(ours[1].numpy(), dense[1].numpy(), "bias gradient")
    # the public weight-gradient kernel is the same sum
    assert_close(label_conv_weight_grad(labels, probe, 29, k, pad).numpy(), dense[0].numpy(), "kernel")


@pytest.mark.parametrize("h,w,k,pad", SHAPES[:3])
def test_with_relu_forward_and_gradients_equal_relu_of_the_dense_convolution(h, w, k, pad):
    """SPADE's mlp_shared is conv + ReLU: the kernel applies it in the same pass, and its backward
    passes the gradient only where the output is positive (about half the pixels here)."""
    rng, labels, weight, bias = random_case(2, h, w, k, seed=4)
    probe = jt.array(rng.standard_normal((2, 16, h, w)).astype(np.float32))
    dense = jt.nn.relu(jt.nn.conv2d(onehot(labels, 29), weight, bias, 1, pad))
    ours = label_conv(labels, weight, bias, pad, relu=True)
    assert_close(ours.numpy(), dense.numpy(), "forward")
    assert 0.2 < (dense.numpy() > 0).mean() < 0.8
    got = jt.grad((ours * probe).sum(), [weight, bias])
    want = jt.grad((dense * probe).sum(), [weight, bias])
    assert_close(got[0].numpy(), want[0].numpy(), "weight gradient")
    assert_close(got[1].numpy(), want[1].numpy(), "bias gradient")
    with jt.no_grad():  # inference runs the forward kernel alone
        assert_close(label_conv(labels, weight, bias, pad, relu=True).numpy(), dense.numpy(), "no_grad forward")


def test_more_input_channels_than_labels_present():
    rng, labels, weight, bias = random_case(2, 12, 16, 3, classes=20, num_labels=35, seed=2)
    x = onehot(labels, 35)
    assert_close(label_conv(labels, weight, bias).numpy(), jt.nn.conv2d(x, weight, bias, 1, 1).numpy(),
                 "forward")
    probe = jt.array(rng.standard_normal((2, 16, 12, 16)).astype(np.float32))
    grad = jt.grad((label_conv(labels, weight, bias) * probe).sum(), weight).numpy()
    assert_close(grad, jt.grad((jt.nn.conv2d(x, weight, bias, 1, 1) * probe).sum(), weight).numpy(),
                 "weight gradient")
    assert not grad[:, 20:].any(), "labels that never occur must get zero gradient"


def test_labels_outside_the_range_are_all_zero_onehot_pixels():
    _, labels, weight, bias = random_case(1, 6, 8, 3, seed=3)
    raw = labels.numpy()
    raw[0, 0, :4] = [-1, 29, 1000, -7]
    labels = jt.array(raw)
    assert_close(label_conv(labels, weight, bias).numpy(),
                 jt.nn.conv2d(onehot(labels, 29), weight, bias, 1, 1).numpy(), "forward")


def test_taps_line_up_at_the_corners():
    """One pixel of label 1 in the top-left corner, one of label 2 in the bottom-right, label 0
    elsewhere: each output pixel must read exactly the taps the padding rule says it reads."""
    h, w, c, k = 5, 6, 3, 4
    raw = np.zeros((1, h, w), np.int32)
    raw[0, 0, 0], raw[0, h - 1, w - 1] = 1, 2
    labels = jt.array(raw)
    weight_np = np.arange(c * k * 9, dtype=np.float32).reshape(c, k, 3, 3)  # every tap distinct
    weight = jt.array(weight_np)
    out = label_conv(labels, weight, None, 1).numpy()[0]
    # (0, 0) reads the corner through the centre tap, (1, 1) through the top-left tap
    padded = np.pad(raw[0], 1, constant_values=-1)
    expected = np.zeros((c, h, w), np.float32)
    for y in range(h):
        for x in range(w):
            for ky in range(3):
                for kx in range(3):
                    lab = padded[y + ky, x + kx]
                    if lab >= 0:
                        expected[:, y, x] += weight_np[:, lab, ky, kx]
    assert_close(out, expected, "forward")
    assert_close(out[:, 0, 0], weight_np[:, 1, 1, 1] + weight_np[:, 0, 1:, 1:].sum((1, 2))
                 - weight_np[:, 0, 1, 1], "corner pixel")
    # gradient of a single output pixel: dW[:, l, ky, kx] = 1 where that pixel's tap reads label l
    for y, x in [(0, 0), (1, 1), (h - 1, w - 1), (h - 2, w - 2), (0, w - 1)]:
        dy = np.zeros((1, c, h, w), np.float32)
        dy[0, :, y, x] = 1
        dw = label_conv_weight_grad(labels, jt.array(dy), k, 3, 1).numpy()
        want = np.zeros((c, k, 3, 3), np.float32)
        for ky in range(3):
            for kx in range(3):
                lab = padded[y + ky, x + kx]
                if lab >= 0:
                    want[:, lab, ky, kx] = 1
        np.testing.assert_array_equal(dw, want, err_msg=f"weight gradient of output pixel {(y, x)}")


@pytest.mark.parametrize("k", [29, 40])
def test_forward_sums_in_the_order_of_onednns_avx512_direct_convolution(k):
    """PyTorch's CPU convolution (oneDNN's direct AVX-512 kernel) sums each block of 16 input channels from
    zero in tap order, adds the bias to the first block's sum, then each further block's sum: for a one-hot
    map, the taps grouped by label block. The kernel sums in that order, to the bit (measured against
    torch 2.14: every output bit-equal, against 48% adding the taps to the bias one by one). 29 labels:
    one or two blocks per pixel (summed without branches); 40: also three (summed by search)."""
    rng = np.random.default_rng(5)
    c = 8
    labels = rng.integers(0, k, (1, 6, 7)).astype(np.int32)
    labels[0, 0, :] = np.array([3, 20, 35, 3, 17, 1, 39]) % k
    # magnitudes 1e-4 .. 1e4: sums whose rounding shows their order
    weight = (rng.standard_normal((c, k, 3, 3)) * rng.choice([1e-4, 1.0, 1e4], size=(c, k, 3, 3))).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    padded = np.pad(labels[0], 1, constant_values=-1)
    want = np.zeros((1, c, 6, 7), np.float32)
    for y in range(6):
        for x in range(7):
            taps = [(t, padded[y + t // 3, x + t % 3]) for t in range(9)]
            taps = [(t, l) for t, l in taps if l >= 0]
            for ch in range(c):
                if len({l for _, l in taps}) == 1 and len(taps) == 9:  # one label: the sum of its taps + bias
                    s = np.float32(0)
                    for t, l in taps:
                        s = np.float32(s + weight[ch, l, t // 3, t % 3])
                    want[0, ch, y, x] = np.float32(bias[ch] + s)
                    continue
                acc = bias[ch]
                for block in sorted({l // 16 for _, l in taps}):
                    s = np.float32(0)
                    for t, l in taps:
                        if l // 16 == block:
                            s = np.float32(s + weight[ch, l, t // 3, t % 3])
                    acc = np.float32(acc + s)
                want[0, ch, y, x] = acc
    got = label_conv(jt.array(labels), jt.array(weight), jt.array(bias), 1).numpy()
    assert np.array_equal(got, want), f"{np.mean(got != want):.1%} of outputs differ, max {np.abs(got - want).max():.3g}"


def test_label_ids_are_the_hot_channel_or_num_ids_for_none():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 29, (2, 30, 41)).astype(np.int32)  # over one block of 512 pixels
    sem = (labels[:, None] == np.arange(29)[None, :, None, None]).astype(np.float32)
    sem[0, :, 2, 3] = 0  # a pixel of no class
    extra = rng.uniform(0, 1, (2, 1, 30, 41)).astype(np.float32)  # e.g. instance edges: not a label
    got = label_ids(jt.array(np.concatenate([sem, extra], 1)), 29).numpy()
    want = labels.copy()
    want[0, 2, 3] = 29
    assert got.dtype == np.int32 and np.array_equal(got, want)
