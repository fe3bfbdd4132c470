"""The poolings the networks use, computed as PyTorch computes them: VGG19's 2x2 max pool and the 3x3
average pools that ignore zero padding (the multiscale discriminator's downsampling, stride 2; the FID
Inception's pooling branches, stride 1).

On the CPU each is one multithreaded pass forward and one backward (`jt.code`, OpenMP over the (n, c)
planes). Jittor's own ops run them single-threaded, and the average pool as four ops (pad, pool,
rescale by 9 / count): about 40 ms of an ngf-16 TSIT training step at 256x128, batch 2
(docs/performance.md). On CUDA, or with JSPADE_FUSED_POOL=0, Jittor's ops run instead.

What PyTorch does, and so these do:
* max pool: the first largest value of a window in row-major order (a NaN wins), and the gradient goes
  to that one pixel only (a window of ties, common after a ReLU, passes it to its first pixel);
* average pool, count_include_pad=False: the window's in-image pixels summed in float32 in row-major
  order, divided by their count; the backward adds dy / count to each of them, windows in row-major order.
"""
import os

import numpy as np

from jspade.runtime import cpu_kernel, jt, release_saved

_enabled = os.environ.get("JSPADE_FUSED_POOL", "1") != "0"


def set_enabled(enabled):
    """Pooling kernels on (the default) or off (Jittor's ops) from now on."""
    global _enabled
    _enabled = bool(enabled)


def enabled():
    return _enabled and not jt.flags.use_cuda


_HEADER = r"""
#include <cmath>
#include <cstdint>
#include <cstring>

// Jittor compiles kernels with -Ofast; these are compiled with -fno-unsafe-math-optimizations
// -fno-finite-math-only (`_FLAGS`) as well, so that the average pool's sums are not reordered, its
// divisions are not turned into products by an (approximate, when vectorised) reciprocal, and the max
// pool sees NaNs: PyTorch's results to the bit
namespace pooling {

// planes of [planes, h, w] -> [planes, h / 2, w / 2]; `at` gets the window position (0..3) of each max
static void max2x2(const float* x, float* y, uint8_t* at, long long planes, int h, int w) {
    const int oh = h / 2, ow = w / 2;
    #pragma omp parallel for schedule(static)
    for (long long p = 0; p < planes; p++) {
        const float* xp = x + p * h * w;
        float* yp = y + p * oh * ow;
        uint8_t* ap = at + p * oh * ow;
        for (int i = 0; i < oh; i++)
            for (int j = 0; j < ow; j++) {
                const float* r0 = xp + (2 * i) * w + 2 * j;
                const float v[4] = {r0[0], r0[1], r0[w], r0[w + 1]};
                float best = v[0];
                int k = 0;
                for (int t = 1; t < 4; t++)
                    if (!std::isnan(best) && (v[t] > best || std::isnan(v[t]))) { best = v[t]; k = t; }
                yp[i * ow + j] = best;
                ap[i * ow + j] = (uint8_t)k;
            }
    }
}

static void max2x2_backward(const float* dy, const uint8_t* at, float* dx, long long planes, int h, int w) {
    const int oh = h / 2, ow = w / 2;
    #pragma omp parallel for schedule(static)
    for (long long p = 0; p < planes; p++) {
        float* dp = dx + p * h * w;
        std::memset(dp, 0, sizeof(float) * h * w);
        const float* gp = dy + p * oh * ow;
        const uint8_t* ap = at + p * oh * ow;
        for (int i = 0; i < oh; i++)
            for (int j = 0; j < ow; j++) {
                const int k = ap[i * ow + j];
                dp[(2 * i + (k >> 1)) * w + 2 * j + (k & 1)] = gp[i * ow + j];
            }
    }
}

// the rows (or columns) [from, to) of window `o` of a 3-wide pool with padding 1 and `stride` over n
static inline void window(int o, int stride, int n, int& from, int& to) {
    from = o * stride - 1;
    to = from + 3;
    if (from < 0) from = 0;
    if (to > n) to = n;
}

static void avg3x3(const float* x, float* y, long long planes, int h, int w, int stride) {
    const int oh = (h - 1) / stride + 1, ow = (w - 1) / stride + 1;
    #pragma omp parallel for schedule(static)
    for (long long p = 0; p < planes; p++) {
        const float* xp = x + p * h * w;
        float* yp = y + p * oh * ow;
        for (int i = 0; i < oh; i++) {
            int r0, r1;
            window(i, stride, h, r0, r1);
            // windows wholly inside the image: nine terms in a fixed order, which the compiler can
            // vectorise over j without reordering any one sum
            int inner_from = 1 / stride + (1 % stride != 0), inner_to = (w - 2) / stride + 1;
            if (r1 - r0 < 3) inner_from = inner_to = 0;
            const float* a = xp + r0 * w - 1;
            const float* b = a + w;
            const float* c = b + w;
            for (int j = inner_from; j < inner_to; j++) {
                const int k = j * stride;
                float sum = 0.f;
                sum += a[k]; sum += a[k + 1]; sum += a[k + 2];
                sum += b[k]; sum += b[k + 1]; sum += b[k + 2];
                sum += c[k]; sum += c[k + 1]; sum += c[k + 2];
                yp[i * ow + j] = sum / 9.f;
            }
            for (int j = 0; j < ow; j++) {
                if (j == inner_from && inner_from < inner_to) j = inner_to;
                if (j >= ow) break;
                int c0, c1;
                window(j, stride, w, c0, c1);
                float sum = 0.f;
                for (int r = r0; r < r1; r++)
                    for (int c = c0; c < c1; c++) sum += xp[r * w + c];
                yp[i * ow + j] = sum / (float)((r1 - r0) * (c1 - c0));
            }
        }
    }
}

static void avg3x3_backward(const float* dy, float* dx, long long planes, int h, int w, int stride) {
    const int oh = (h - 1) / stride + 1, ow = (w - 1) / stride + 1;
    #pragma omp parallel for schedule(static)
    for (long long p = 0; p < planes; p++) {
        float* dp = dx + p * h * w;
        std::memset(dp, 0, sizeof(float) * h * w);
        const float* gp = dy + p * oh * ow;
        for (int i = 0; i < oh; i++) {
            int r0, r1;
            window(i, stride, h, r0, r1);
            for (int j = 0; j < ow; j++) {
                int c0, c1;
                window(j, stride, w, c0, c1);
                const float g = gp[i * ow + j] / (float)((r1 - r0) * (c1 - c0));
                for (int r = r0; r < r1; r++)
                    for (int c = c0; c < c1; c++) dp[r * w + c] += g;
            }
        }
    }
}

}  // namespace pooling
"""

_FLAGS = "-fno-unsafe-math-optimizations -fno-finite-math-only"
_ARGS = '(long long)data["planes"], (int)data["h"], (int)data["w"]'


def _code(shapes, dtypes, inputs, src, x_shape, stride=0):
    n, c, h, w = x_shape
    return cpu_kernel(shapes, dtypes, inputs, _HEADER, src, {"planes": n * c, "h": h, "w": w, "stride": stride},
                      _FLAGS)


class _MaxPool2x2(jt.Function):
    def execute(self, x):
        n, c, h, w = x.shape
        y, at = _code([(n, c, h // 2, w // 2)] * 2, ["float32", "uint8"], [x],
                      f"pooling::max2x2(in0_p, out0_p, out1_p, {_ARGS});", x.shape)
        self.saved = (at.detach(), tuple(x.shape))
        return y

    def grad(self, dy):
        at, x_shape = release_saved(self)
        return _code(x_shape, "float32", [dy.float32(), at],
                     f"pooling::max2x2_backward(in0_p, in1_p, out0_p, {_ARGS});", x_shape)


class _AvgPool3x3(jt.Function):
    def execute(self, x, stride):
        n, c, h, w = x.shape
        self.saved = (tuple(x.shape), stride)
        return _code((n, c, (h - 1) // stride + 1, (w - 1) // stride + 1), "float32", [x],
                     f'pooling::avg3x3(in0_p, out0_p, {_ARGS}, (int)data["stride"]);', x.shape, stride)

    def grad(self, dy):
        x_shape, stride = release_saved(self)
        return _code(x_shape, "float32", [dy.float32()],
                     f'pooling::avg3x3_backward(in0_p, out0_p, {_ARGS}, (int)data["stride"]);', x_shape, stride), None


class MaxPool2x2(jt.nn.Module):
    """nn.MaxPool2d(2, 2) (no parameters)."""

    def execute(self, x):
        return max_pool2x2(x)


def max_pool2x2(x):
    """F.max_pool2d(x, 2, stride=2) of NCHW `x` (VGG19's pools)."""
    if not enabled() or x.dtype != "float32":
        return jt.nn.pool(x, 2, "maximum", stride=2)
    return _MaxPool2x2.apply(x)


def avg_pool3x3_exclude_pad(x, stride):
    """F.avg_pool2d(x, 3, stride, padding=1, count_include_pad=False): each window averages only its
    in-image pixels. Stride 2 is the multiscale discriminator's downsampling, stride 1 the FID
    Inception's pooling branches."""
    if enabled() and x.dtype == "float32":
        return _AvgPool3x3.apply(x, stride)
    # Jittor's pool ignores count_include_pad: the zero-padded mean, rescaled by the true pixel counts
    h, w = x.shape[2], x.shape[3]
    mean9 = jt.nn.pool(jt.nn.pad(x, (1, 1, 1, 1)), 3, "mean", padding=0, stride=stride)

    def counts(n):
        out = (n + 2 - 3) // stride + 1
        starts = np.arange(out) * stride - 1
        return (np.minimum(starts + 3, n) - np.maximum(starts, 0)).astype(np.float32)

    scale = 9.0 / np.outer(counts(h), counts(w))
    return mean9 * jt.array(scale.astype(np.float32)).reshape(1, 1, *scale.shape)
