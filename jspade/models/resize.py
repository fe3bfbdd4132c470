"""Resampling with PyTorch's `F.interpolate` index conventions, so that ported networks see exactly the
pixels the original saw (the poolings are in pooling.py)."""
import numpy as np

from jspade.runtime import cpu_kernel, jt


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


# nn.Upsample(scale_factor=2) on the CPU: one multithreaded pass each way (Jittor's broadcast and its
# backward's reduction run on one thread). The backward sums each pixel's four gradients as PyTorch's
# CPU kernel does (from zero, row by row), compiled so that -Ofast cannot reorder the sums.
_UPSAMPLE_HEADER = r"""
#include <cstring>
namespace upsample {
static void forward(const float* x, float* y, long long planes, int h, int w) {
    #pragma omp parallel for schedule(static)
    for (long long p = 0; p < planes; p++)
        for (int i = 0; i < h; i++) {
            const float* row = x + (p * h + i) * w;
            float* out = y + (p * 2 * h + 2 * i) * 2 * w;
            for (int j = 0; j < w; j++) out[2 * j] = out[2 * j + 1] = row[j];
            std::memcpy(out + 2 * w, out, sizeof(float) * 2 * w);
        }
}
static void backward(const float* dy, float* dx, long long planes, int h, int w) {
    #pragma omp parallel for schedule(static)
    for (long long p = 0; p < planes; p++)
        for (int i = 0; i < h; i++) {
            const float* a = dy + (p * 2 * h + 2 * i) * 2 * w;
            const float* b = a + 2 * w;
            float* out = dx + (p * h + i) * w;
            for (int j = 0; j < w; j++) {
                float sum = 0.f;
                sum += a[2 * j]; sum += a[2 * j + 1]; sum += b[2 * j]; sum += b[2 * j + 1];
                out[j] = sum;
            }
        }
}
}  // namespace upsample
"""
_ARGS = '(long long)data["planes"], (int)data["h"], (int)data["w"]'


def _upsample_code(shape, v, src, small_shape):
    """`src` on `v`, writing `shape`; `small_shape` is the NCHW shape of the low-resolution side."""
    n, c, h, w = small_shape
    return cpu_kernel(shape, "float32", [v], _UPSAMPLE_HEADER, src, {"planes": n * c, "h": h, "w": w},
                      "-fno-unsafe-math-optimizations")


class _Upsample2x(jt.Function):
    def execute(self, x):
        n, c, h, w = x.shape
        return _upsample_code((n, c, 2 * h, 2 * w), x, f"upsample::forward(in0_p, out0_p, {_ARGS});", x.shape)

    def grad(self, dy):
        n, c, h, w = dy.shape[0], dy.shape[1], dy.shape[2] // 2, dy.shape[3] // 2
        return _upsample_code((n, c, h, w), dy.float32(), f"upsample::backward(in0_p, out0_p, {_ARGS});",
                              (n, c, h, w))


def upsample2x(x):
    """nn.Upsample(scale_factor=2), nearest."""
    if jt.flags.use_cuda or x.dtype != "float32":
        return resize_nearest(x, (x.shape[2] * 2, x.shape[3] * 2))
    return _Upsample2x.apply(x)


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
