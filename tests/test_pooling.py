"""The pooling kernels compute what PyTorch computes, to the bit: the average pool sums a window's
in-image pixels in float32, row by row, and divides by their count (its backward adds dy / count to each,
windows in row-major order); the max pool takes a window's first largest value (a NaN wins) and passes
the gradient to that pixel only. Jittor's ops (the CUDA path) agree to float32 rounding."""
import numpy as np
import pytest

from jspade.models import pooling
from jspade.runtime import jt

pytestmark = pytest.mark.skipif(not pooling.enabled(), reason="the pooling kernels run on the CPU")


def windows(n, stride):
    """(from, to) of each 3-wide window with padding 1 over n pixels."""
    return [(max(o * stride - 1, 0), min(o * stride + 2, n)) for o in range((n - 1) // stride + 1)]


def avg_pool_reference(x, stride):
    """PyTorch's CPU loop in numpy float32: forward, and the backward of a probe `dy`."""
    n, c, h, w = x.shape
    rows, cols = windows(h, stride), windows(w, stride)
    y = np.zeros((n, c, len(rows), len(cols)), np.float32)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            s = np.zeros((n, c), np.float32)
            for r in range(r0, r1):
                for q in range(c0, c1):
                    s = s + x[:, :, r, q]
            y[:, :, i, j] = s / np.float32((r1 - r0) * (c1 - c0))
    return y


def avg_pool_grad_reference(dy, x_shape, stride):
    n, c, h, w = x_shape
    dx = np.zeros(x_shape, np.float32)
    for i, (r0, r1) in enumerate(windows(h, stride)):
        for j, (c0, c1) in enumerate(windows(w, stride)):
            g = dy[:, :, i, j] / np.float32((r1 - r0) * (c1 - c0))
            for r in range(r0, r1):
                for q in range(c0, c1):
                    dx[:, :, r, q] = dx[:, :, r, q] + g
    return dx


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("h,w", [(7, 9), (8, 6), (2, 3), (13, 20)])
def test_average_pool_is_pytorchs_to_the_bit(h, w, stride):
    rng = np.random.default_rng(h * w + stride)
    x = (rng.standard_normal((2, 3, h, w)) + 2).astype(np.float32)  # an offset makes a wrong divisor obvious
    xv = jt.array(x)
    y = pooling.avg_pool3x3_exclude_pad(xv, stride)
    expected = avg_pool_reference(x, stride)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(y.numpy(), expected)
    dy = rng.standard_normal(expected.shape).astype(np.float32)
    dx = jt.grad((pooling.avg_pool3x3_exclude_pad(xv, stride) * jt.array(dy)).sum(), xv).numpy()
    np.testing.assert_array_equal(dx, avg_pool_grad_reference(dy, x.shape, stride))
    pooling.set_enabled(False)  # Jittor's ops: the same up to float32 rounding
    try:
        np.testing.assert_allclose(pooling.avg_pool3x3_exclude_pad(xv, stride).numpy(), expected, rtol=1e-6)
    finally:
        pooling.set_enabled(True)


def test_max_pool_takes_the_first_largest_and_passes_the_gradient_to_it():
    x = np.array([[[[0, 0, 1, 3, 9],  # windows: (0, 0 / 0, 0): a tie, the first wins;
                    [0, 0, 3, 2, 9],  # (1, 3 / 3, 2): the second pixel of the first row and
                    [5, np.nan, -1, -2, 9],  # the first of the second tie, the first wins;
                    [6, 7, -3, -1, 9],  # (5, nan / 6, 7): the NaN wins; (-1, -2 / -3, -1): tie
                    [9, 9, 9, 9, 9]]]], np.float32)  # odd size: the last row and column are dropped
    xv = jt.array(x)
    y = pooling.max_pool2x2(xv).numpy()[0, 0]
    np.testing.assert_array_equal(y[0], [0, 3])
    assert np.isnan(y[1, 0]) and y[1, 1] == -1
    dy = jt.array(np.array([[[[1, 2], [3, 4]]]], np.float32))
    dx = jt.grad((pooling.max_pool2x2(xv) * dy).sum(), xv).numpy()[0, 0]
    expected = np.zeros((5, 5), np.float32)
    expected[0, 0], expected[0, 3], expected[2, 1], expected[2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx, expected)


def test_max_pool_agrees_with_jittors_on_a_feature_map():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((2, 16, 12, 18)), 0).astype(np.float32)  # a ReLU's output: ties
    xv, dy = jt.array(x), jt.array(rng.standard_normal((2, 16, 6, 9)).astype(np.float32))
    ours = pooling.max_pool2x2(xv).numpy()
    dx = jt.grad((pooling.max_pool2x2(xv) * dy).sum(), xv).numpy()
    np.testing.assert_array_equal(ours, x.reshape(2, 16, 6, 2, 9, 2).max(axis=(3, 5)))
    # each window passes its gradient to exactly one pixel, one holding the window's max
    windows_dx = dx.reshape(2, 16, 6, 2, 9, 2)
    assert ((windows_dx != 0).sum(axis=(3, 5)) <= 1).all()
    np.testing.assert_allclose(windows_dx.sum(axis=(3, 5)), dy.numpy(), rtol=0, atol=0)
    pooling.set_enabled(False)
    try:
        np.testing.assert_array_equal(pooling.max_pool2x2(xv).numpy(), ours)
    finally:
        pooling.set_enabled(True)
