"""3x3 convolutions (stride 1, zero padding 1) of few channels on one side, on the CPU (`applies`): the
generator's last layer (conv_img, ngf -> 3 channels), VGG19's first (3 -> 64), TSIT's full-resolution
29 -> 16, and their input gradients.

With so few channels on one side, neither of oneDNN's algorithms has enough work per weight to fill its
blocked layouts: its direct convolution of 3 -> 64 channels and Winograd's of 16 -> 3 run at a small
fraction of the CPU's rate. Here each output row is computed from zero-padded copies of the three input
rows it reads: per block of 16 pixels (one vector), four output channels at a time, each of the
C_in x 9 shifted input vectors is loaded once and multiplied into the four sums, in the order
(input channel, ky, kx). Rows are spread over the threads (OpenMP). The input gradient is the same
kernel over dy with the weight transposed and flipped (`transposed`); the weight gradient stays
oneDNN's. winograd.conv3x3 decides where this kernel runs. 1.3-4x faster than oneDNN's better algorithm
per layer and pass (docs/performance.md).

The sums run in another order than oneDNN's: the result equals `jt.nn.conv2d` to float32 rounding.
"""
from jspade.runtime import cpu_kernel, with_epilogue

NARROW = 8               # at most this many input or output channels,
SMALL = 512              # or fewer in x out channels than this (16 -> 16, TSIT's 29 -> 16)
MAX_IN_CHANNELS = 1024   # bounds a thread's buffer of padded rows (C_in x 3 rows)

_HEADER = r"""
#include <algorithm>
#include <cstring>
#include <vector>

namespace narrow {
typedef float v16 __attribute__((vector_size(64)));
static inline v16 load16(const float* p) { v16 v; std::memcpy(&v, p, sizeof v); return v; }

// Row y of image n of every output channel p, plus the residual's row and bias[p] (each may be null),
// rounded as winograd.py's epilogue: (y + residual) + bias.
#pragma GCC push_options
#pragma GCC optimize("no-associative-math")
__attribute__((noinline)) static void add_to_row(float* out, const float* bias, const float* residual, int n, int P,
                                                 int H, int W, int y) {
    for (int p = 0; p < P; p++) {
        const size_t at = (((size_t)n * P + p) * H + y) * W;
        float* o = out + at;
        const float* r = residual ? residual + at : nullptr;
        const float b = bias ? bias[p] : 0.f;
        if (bias && r) for (int x = 0; x < W; x++) o[x] = (o[x] + r[x]) + b;
        else if (bias) for (int x = 0; x < W; x++) o[x] = o[x] + b;
        else for (int x = 0; x < W; x++) o[x] = o[x] + r[x];
    }
}
#pragma GCC pop_options

// out[n, p] = sum over q, ky, kx of m[p][q * 9 + ky * 3 + kx] * in[n, q] shifted by (ky - 1, kx - 1);
// m is w ([P, Q, 3, 3]) or, `transposed`, w ([Q, P, 3, 3]) with in and out channels swapped and the
// kernel flipped (the input gradient of w's convolution)
// Then + bias and + residual where given (`add_to_row`, the forward only).
static void conv3x3(const float* in, const float* w, float* out, int N, int Q, int P, int H, int W,
                    int transposed, const float* bias = nullptr, const float* residual = nullptr) {
    const int K = Q * 9, PB = (P + 3) / 4;
    std::vector<float> m((size_t)PB * K * 4, 0.f);  // [P / 4][K][4]: four output channels' weights side by side
    for (int p = 0; p < P; p++)
        for (int q = 0; q < Q; q++)
            for (int t = 0; t < 9; t++)
                m[((size_t)(p / 4) * K + q * 9 + t) * 4 + p % 4] =
                    transposed ? w[((size_t)q * P + p) * 9 + (8 - t)] : w[((size_t)p * Q + q) * 9 + t];
    const int WP = (W + 15) / 16 * 16 + 2;  // a padded row: x = -1 .. W, and zeros to the block's end
    #pragma omp parallel
    {
        std::vector<float> rows((size_t)Q * 3 * WP);
        #pragma omp for schedule(static)
        for (long long r = 0; r < (long long)N * H; r++) {
            const int n = (int)(r / H), y = (int)(r % H);
            for (int q = 0; q < Q; q++)
                for (int ky = 0; ky < 3; ky++) {
                    float* dst = rows.data() + (size_t)(q * 3 + ky) * WP;
                    const int sy = y + ky - 1;
                    std::fill(dst, dst + WP, 0.f);
                    if (sy >= 0 && sy < H)
                        std::memcpy(dst + 1, in + (((size_t)n * Q + q) * H + sy) * W, sizeof(float) * W);
                }
            for (int x0 = 0; x0 < W; x0 += 16) {
                const int nx = std::min(16, W - x0);
                for (int pb = 0; pb < PB; pb++) {
                    v16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
                    const float* mp = m.data() + (size_t)pb * K * 4;
                    for (int q = 0; q < Q; q++)
                        for (int ky = 0; ky < 3; ky++) {
                            const float* s = rows.data() + (size_t)(q * 3 + ky) * WP + x0;
                            for (int kx = 0; kx < 3; kx++, mp += 4) {
                                const v16 v = load16(s + kx);
                                a0 += mp[0] * v;
                                a1 += mp[1] * v;
                                a2 += mp[2] * v;
                                a3 += mp[3] * v;
                            }
                        }
                    const v16 acc[4] = {a0, a1, a2, a3};
                    for (int k = 0; k < 4 && pb * 4 + k < P; k++) {
                        float* o = out + (((size_t)n * P + pb * 4 + k) * H + y) * W + x0;
                        if (nx == 16) std::memcpy(o, &acc[k], sizeof(v16));
                        else for (int l = 0; l < nx; l++) o[l] = acc[k][l];
                    }
                }
            }
            if (bias || residual) add_to_row(out, bias, residual, n, P, H, W, y);
        }
    }
}
}  // namespace narrow
"""

_FLAGS = "-O3"  # 25% faster than Jittor's -O2 here

_SRC = 'narrow::conv3x3(in0_p, in1_p, out0_p, (int)data["n"], (int)data["q"], (int)data["p"], (int)data["h"], ' \
       '(int)data["w"], (int)data["transposed"]);'


def applies(x_shape, out_channels):
    """Whether a 3x3 convolution of inputs `x_shape` to `out_channels` is narrow enough for this kernel."""
    ic = x_shape[1]
    return (min(ic, out_channels) <= NARROW or ic * out_channels < SMALL) and ic <= MAX_IN_CHANNELS


def conv3x3(x, weight, transposed=False, bias=None, residual=None):
    """The convolution of NCHW `x` with a [C_out, C_in, 3, 3] `weight`; `transposed`: with `x` of C_out
    channels, the input gradient of that convolution (C_in channels). float32. Forward only: plus
    `residual` (the output's shape) and `bias` ([C_out]) where given, in the same pass, rounded as
    (y + residual) + bias (not differentiable: for a rendering, under jt.no_grad)."""
    n, q, h, w = x.shape
    p = weight.shape[1] if transposed else weight.shape[0]
    extra = [v for v in (bias, residual) if v is not None]
    src = with_epilogue(_SRC, 2, bias is not None, residual is not None)
    return cpu_kernel((n, p, h, w), "float32", [x, weight] + extra, _HEADER, src,
                      {"n": n, "q": q, "p": p, "h": h, "w": w, "transposed": int(transposed)}, _FLAGS)
