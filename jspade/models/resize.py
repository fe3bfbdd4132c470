"""Resampling with PyTorch's `F.interpolate` / `F.avg_pool2d` index conventions, so that ported
networks see exactly the pixels the original saw."""
import numpy as np

from jspade.runtime import jt


def _nearest_index(in_size, out_size):
    # PyTorch 'nearest': src = floor(dst * (in / out)) in float32, clamped.
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int32)
    return np.minimum(idx, in_size - 1)


def resize_nearest(x, size):
    """F.interpolate(x, size, mode='nearest') for NCHW."""
    oh, ow = int(size[0]), int(size[1])
    h, w = x.shape[2], x.shape[3]
    if (h, w) == (oh, ow):
        return x
    if oh % h == 0 and ow % w == 0:  # integer upscaling: a broadcast, much cheaper than a gather
        fh, fw = oh // h, ow // w
        n, c = x.shape[:2]
        return x.reshape(n, c, h, 1, w, 1).broadcast((n, c, h, fh, w, fw)).reshape(n, c, oh, ow)
    ih = jt.array(_nearest_index(h, oh))
    iw = jt.array(_nearest_index(w, ow))
    return x.reindex([x.shape[0], x.shape[1], oh, ow], ["i0", "i1", "@e0(i2)", "@e1(i3)"], extras=[ih, iw])


def upsample2x(x):
    """nn.Upsample(scale_factor=2), nearest."""
    return resize_nearest(x, (x.shape[2] * 2, x.shape[3] * 2))


def bilinear_matrix(in_size, out_size):
    """(out x in) matrix M with M @ signal = PyTorch's 1-d bilinear resize (align_corners=False):
    src = max((dst + 0.5) * in/out - 0.5, 0) in float32 like PyTorch's CPU kernel (in float64 the
    result differs from torch by up to 2e-5 at some sizes)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    l1 = (src - i0).astype(np.float32)
    m = np.zeros((out_size, in_size), np.float32)
    np.add.at(m, (np.arange(out_size), i0), 1 - l1)
    np.add.at(m, (np.arange(out_size), i1), l1)
    return m


def resize_bilinear(x, size):
    """F.interpolate(x, size, mode='bilinear', align_corners=False) for NCHW, as two small matmuls."""
    oh, ow = int(size[0]), int(size[1])
    h, w = x.shape[2], x.shape[3]
    if (h, w) == (oh, ow):
        return x
    mh = jt.array(bilinear_matrix(h, oh))
    mw_t = jt.array(bilinear_matrix(w, ow).T.copy())
    y = jt.matmul(x, mw_t)  # N,C,H,ow
    return jt.matmul(mh, y)  # N,C,oh,ow
