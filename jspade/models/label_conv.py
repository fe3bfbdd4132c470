"""Convolution of a one-hot label map, computed from the labels (an exact rewrite, not an approximation).

SPADE's `mlp_shared` convolution (3x3, label_nc=29 -> 128 channels) reads the one-hot segmentation map.
Convolving a one-hot map multiplies every weight by 0 or 1, so each output is a gather of weight columns
by label:

    out[n, c, y, x] = bias[c] + sum over (ky, kx) of weight[c, L[n, y+ky-p, x+kx-p], ky, kx]

(taps that fall outside the image read the zero padding and contribute nothing), and the weight
gradient is the matching scatter-add:

    dW[c, l, ky, kx] = sum over (n, y, x) with L[n, y+ky-p, x+kx-p] == l of dy[n, c, y, x].

That is ~K (=29) times fewer operations than the dense convolution. Both are multithreaded CPU kernels
(`jt.code`; Jittor compiles them with -Ofast -march=native -fopenmp, so `#pragma omp` runs them on all
cores):

* forward: parallel over output rows (n, y). Per row and block of CB=32 output channels, each pixel
  sums kh*kw contiguous CB-float weight vectors from a table [tap][label][CB] whose row for the padding
  label is zero (the label map is padded with that sentinel, so there is no border branch); a pixel
  whose kh x kw window holds a single label (most of a real segmentation map) adds one precomputed
  sum-of-taps vector instead. A mixed pixel sums its taps in the order PyTorch's CPU convolution
  (oneDNN's AVX-512 direct kernel) sums a one-hot input: per block of 16 labels from zero, the blocks'
  sums added to the bias in block order. For K <= 32 that is two sums without branches: each tap adds
  its weights to one and the zero row to the other, from offsets planned once per row (dearer than one
  sum where most pixels are boundaries; docs/performance.md). The kernels are compiled to keep their
  sums in the written order, so every output is bit-equal to torch's conv2d of the one-hot map on such
  a CPU (against about half adding the taps to the bias one by one): that is what keeps TSIT's eval
  forward within its parity bound, whose content stream also convolves the label map this way. The row
  tile [x][CB] is then transposed (4x4 SSE blocks) into NCHW.
* weight gradient: the pixels of each output row are grouped by (tap, label) (and the single-label
  pixels by label); then, parallel over blocks of CB channels (each thread owns its dW[c] rows; no
  atomics), each group's dy vectors are summed in registers and that row sum is added to the total.
  A sum over N*H*W terms is thus a sum of per-row partial sums, in a fixed order: the rounding error
  stays at the dense convolution's level or below, and the result does not depend on the thread count.

Contract: `labels` int32 [N, H, W]; `weight` float32 [C, K, k, k] (k odd); stride 1, zero padding
`padding`. A label outside [0, K) is a pixel whose one-hot vector is all zeros (as `labels == arange(K)`
gives). The result equals `jt.nn.conv2d(onehot(labels, K), weight, bias, stride=1, padding=padding)` up
to float32 rounding (the order of the sums may differ); it is differentiable w.r.t. weight and bias, not
labels. With `jt.flags.use_cuda` it *is* that dense convolution, so nothing changes on the GPU.
"""
from jspade.runtime import jt, release_saved

# Output channels per block: the inner loops work on CB contiguous floats (4 AVX registers). The forward
# table per block, (K+1)*(kh*kw+1)*CB floats, is ~38 KB for K=29, 3x3; 16 and 8 measured slower.
_CB = 32

_HEADER = r"""#include <vector>
#include <cstring>
#include <cstdint>
#include <algorithm>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
// Jittor compiles kernels with -Ofast, which lets GCC reorder float sums; these kernels sum in a
// stated order (the forward as oneDNN does, the weight gradient row by row), so sums stay as written
// (a compiler that ignores this pragma may reorder them: tests/test_label_conv.py would say so)
#pragma GCC push_options
#pragma GCC optimize("no-associative-math")

// vectors of 8 floats with AVX (-march=native), else 4 (GCC/Clang vector extensions)
#if defined(__AVX__)
#define LC_VW 8
#else
#define LC_VW 4
#endif
// input channels per block of oneDNN's AVX-512 direct convolution (the order the forward sums in)
#define LC_ICB 16
typedef float lc_vec __attribute__((vector_size(LC_VW * 4)));
static inline lc_vec lc_ld(const float* p) { lc_vec v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void lc_st(float* p, lc_vec v) { __builtin_memcpy(p, &v, sizeof v); }

// The KH label rows output row (n, yo) reads, padded by `pad` on each side with the sentinel label K
// (as are labels outside [0, K)) and premultiplied by CB (the row stride of the [label][CB] tables):
// lrow[ky * WP + x + kx] is tap (ky, kx) of pixel x. urow[x] = that label * CB when all KH x KW taps
// of pixel x read one label (a "uniform" pixel: most of a real segmentation map), else -1.
static inline void lc_label_rows(const int* L, int H, int W, int K, int pad, int KH, int KW,
                                 int n, int yo, int WO, int CB, int* lrow, int* urow) {
    const int WP = WO + KW - 1;
    for (int ky = 0; ky < KH; ky++) {
        const int sy = yo + ky - pad;
        int* dst = lrow + ky * WP;
        if (sy < 0 || sy >= H) {
            for (int xx = 0; xx < WP; xx++) dst[xx] = K * CB;
            continue;
        }
        const int* src = L + ((size_t)n * H + sy) * W;
        for (int xx = 0; xx < WP; xx++) {
            const int sx = xx - pad;
            int l = (sx >= 0 && sx < W) ? src[sx] : K;
            l = ((unsigned)l < (unsigned)K) ? l : K;
            dst[xx] = l * CB;
        }
    }
    for (int x = 0; x < WO; x++) {
        const int l = lrow[x];
        bool same = true;
        for (int ky = 0; ky < KH; ky++)
            for (int kx = 0; kx < KW; kx++) same &= lrow[ky * WP + x + kx] == l;
        urow[x] = same ? l : -1;
    }
}

// For K <= 2 * LC_ICB (a pixel reads labels of at most two blocks of LC_ICB): per mixed pixel x of a
// row (urow[x] < 0), the table offset each tap adds to the lower block's sum, plan[x * 2 * KT + t], and
// to the upper's, plan[x * 2 * KT + KT + t]: its weights' row for one, the zero row for the other.
// The same for every block of output channels, so planned once per row.
template <int KH, int KW, int CB>
static inline void lc_tap_plan(const int* lrow, const int* urow, int* plan, int K, int WO) {
    constexpr int KT = KH * KW, span = CB * LC_ICB;  // compile-time: the divisions are shifts
    const int WP = WO + KW - 1, K1 = K + 1;
    for (int x = 0; x < WO; x++) {
        if (urow[x] >= 0) continue;
        int lab[KT], lower = K;  // the pixel's lowest block (the padding's is never below a label's)
        for (int t = 0; t < KT; t++) {
            lab[t] = lrow[(t / KW) * WP + x + t % KW];
            lower = std::min(lower, lab[t] / span);
        }
        int* p = plan + (size_t)x * 2 * KT;
        for (int t = 0; t < KT; t++) {
            const int base = t * K1 * CB, zero = base + K * CB;
            const bool in_lo = lab[t] / span == lower;
            p[t] = in_lo ? base + lab[t] : zero;
            p[KT + t] = in_lo ? zero : base + lab[t];
        }
    }
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < ni, j < nj (a small block transpose),
// 4x4 blocks visited along i (dst's rows) when dst is the large array, else along j (src's rows)
static inline void lc_transpose(const float* src, size_t src_stride, float* dst, size_t dst_stride,
                                int ni, int nj, bool along_i) {
    int ni4 = ni & ~3, nj4 = nj & ~3;
#if defined(__SSE__)
    for (int o = 0; o < (along_i ? nj4 : ni4); o += 4)
        for (int p = 0; p < (along_i ? ni4 : nj4); p += 4) {
            const int i = along_i ? p : o, j = along_i ? o : p;
            __m128 r0 = _mm_loadu_ps(src + (i + 0) * src_stride + j);
            __m128 r1 = _mm_loadu_ps(src + (i + 1) * src_stride + j);
            __m128 r2 = _mm_loadu_ps(src + (i + 2) * src_stride + j);
            __m128 r3 = _mm_loadu_ps(src + (i + 3) * src_stride + j);
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
            _mm_storeu_ps(dst + (j + 0) * dst_stride + i, r0);
            _mm_storeu_ps(dst + (j + 1) * dst_stride + i, r1);
            _mm_storeu_ps(dst + (j + 2) * dst_stride + i, r2);
            _mm_storeu_ps(dst + (j + 3) * dst_stride + i, r3);
        }
#else
    ni4 = nj4 = 0;
#endif
    for (int i = 0; i < ni; i++)  // the edges (all of it without SSE)
        for (int j = (i < ni4 ? nj4 : 0); j < nj; j++) dst[j * dst_stride + i] = src[i * src_stride + j];
}

// result[n, c, y, x] = bias[c] + sum_t weight[c, L(n, y+ky-pad, x+kx-pad), t], then max(0, .) if `relu`
template <int KH, int KW, int CB>
static void lc_forward(const int* L, const float* weight, const float* bias, float* result,
                       int N, int H, int W, int C, int K, int pad, int HO, int WO, int relu) {
    constexpr int KT = KH * KW, NV = CB / LC_VW, XC = 256;  // pixels per row tile
    const int K1 = K + 1, WP = WO + KW - 1, NB = (C + CB - 1) / CB;
    const size_t TB = (size_t)(KT + 1) * K1 * CB;  // per channel block: [tap | sum of taps][label][cc]
    std::vector<float> table((size_t)NB * TB, 0.f), bias_b((size_t)NB * CB, 0.f);
    for (int c = 0; c < C; c++) {
        const int b = c / CB, cc = c % CB;
        bias_b[c] = bias[c];
        for (int l = 0; l < K; l++) {
            float s = 0.f;
            for (int t = 0; t < KT; t++) {
                const float w = weight[((size_t)c * K + l) * KT + t];
                table[b * TB + ((size_t)t * K1 + l) * CB + cc] = w;
                s += w;
            }
            table[b * TB + ((size_t)KT * K1 + l) * CB + cc] = s;
        }
    }
    #pragma omp parallel
    {
        std::vector<float> tile_v((size_t)XC * CB);
        std::vector<int> lrow_v((size_t)KH * WP), urow_v(WO), plan_v(K <= 2 * LC_ICB ? (size_t)WO * 2 * KT : 0);
        float* tile = tile_v.data();
        const int* lrow = lrow_v.data();
        const int* urow = urow_v.data();
        #pragma omp for schedule(static)
        for (int r = 0; r < N * HO; r++) {
            const int n = r / HO, yo = r % HO;
            lc_label_rows(L, H, W, K, pad, KH, KW, n, yo, WO, CB, lrow_v.data(), urow_v.data());
            if (K <= 2 * LC_ICB) lc_tap_plan<KH, KW, CB>(lrow, urow, plan_v.data(), K, WO);
            for (int x0 = 0; x0 < WO; x0 += XC) {
                const int xn = std::min(XC, WO - x0);
                for (int b = 0; b < NB; b++) {
                    const float* tb = table.data() + b * TB;
                    const float* sums = tb + (size_t)KT * K1 * CB;
                    lc_vec bb[NV];
                    for (int j = 0; j < NV; j++) bb[j] = lc_ld(bias_b.data() + b * CB + j * LC_VW);
                    for (int x = x0; x < x0 + xn; x++) {
                        lc_vec acc[NV];
                        for (int j = 0; j < NV; j++) acc[j] = bb[j];
                        const int u = urow[x];
                        if (u >= 0) {
                            for (int j = 0; j < NV; j++) acc[j] += lc_ld(sums + u + j * LC_VW);
                        } else if (K <= 2 * LC_ICB) {  // labels of at most two blocks: two sums, no branches
                            const int* p = plan_v.data() + (size_t)x * 2 * KT;
                            lc_vec lo[NV], hi[NV];
                            for (int j = 0; j < NV; j++) lo[j] = hi[j] = lc_vec{};
                            for (int t = 0; t < KT; t++)
                                for (int j = 0; j < NV; j++) {
                                    lo[j] += lc_ld(tb + p[t] + j * LC_VW);
                                    hi[j] += lc_ld(tb + p[KT + t] + j * LC_VW);
                                }
                            for (int j = 0; j < NV; j++) acc[j] = (acc[j] + lo[j]) + hi[j];
                        } else {  // K > 32: a pixel may read three or more blocks; each block's taps found by search
                            int rest = 0, lab[KT];
                            for (int t = 0; t < KT; t++) {
                                lab[t] = lrow[(t / KW) * WP + x + t % KW];
                                rest += lab[t] < K * CB;
                            }
                            int lo = 0;  // labels below lo * CB are summed already
                            while (rest > 0) {
                                int block = K;
                                for (int t = 0; t < KT; t++)
                                    if (lab[t] >= lo * CB && lab[t] < K * CB) block = std::min(block, lab[t] / (CB * LC_ICB));
                                const int hi = (block + 1) * LC_ICB;
                                lc_vec part[NV];
                                for (int j = 0; j < NV; j++) part[j] = lc_vec{};
                                for (int t = 0; t < KT; t++)
                                    if (lab[t] >= lo * CB && lab[t] < std::min(hi, K) * CB) {
                                        const float* w = tb + (size_t)t * K1 * CB + lab[t];
                                        for (int j = 0; j < NV; j++) part[j] += lc_ld(w + j * LC_VW);
                                        rest--;
                                    }
                                for (int j = 0; j < NV; j++) acc[j] += part[j];
                                lo = hi;
                            }
                        }
                        if (relu) {  // as ReLU's x > 0 ? x : 0 (NaN -> 0)
                            const lc_vec zero{};
                            for (int j = 0; j < NV; j++) acc[j] = acc[j] > zero ? acc[j] : zero;
                        }
                        float* tl = tile + (size_t)(x - x0) * CB;
                        for (int j = 0; j < NV; j++) lc_st(tl + j * LC_VW, acc[j]);
                    }
                    const int ce = std::min(CB, C - b * CB);
                    lc_transpose(tile, CB, result + (((size_t)n * C + b * CB) * HO + yo) * WO + x0,
                                 (size_t)HO * WO, xn, ce, true);
                }
            }
        }
    }
}

// dw[c, l, t] = sum over (n, y, x) whose tap t reads label l of dy[n, c, y, x]. For a chunk of output
// rows, the pixels of each row are first grouped by (tap, label) (uniform pixels, whose taps all read
// one label, form one more group per label; parallel over rows). Then, parallel over blocks of CB
// channels (a thread owns dw[c] for its blocks; no atomics), each group's dy vectors are summed in
// registers and that row sum is added to the total. So no float32 sum runs over more than one row's
// pixels (or the N*HO row sums), there is no scatter to memory, and the order of every sum is fixed
// (the result is the same for any number of threads).
template <int KH, int KW, int CB>
static void lc_weight_grad(const int* L, const float* dy, float* dw,
                           int N, int H, int W, int C, int K, int pad, int HO, int WO) {
    constexpr int KT = KH * KW, NV = CB / LC_VW, NG = KT + 1;  // groups: taps, then uniform pixels
    const int K1 = K + 1, WP = WO + KW - 1, NB = (C + CB - 1) / CB, R = N * HO;
    const int RC = std::max(1, std::min(R, (1 << 16) / std::max(WO, 1)));  // rows per chunk
    // per chunk row q: its entries (pixel x * CB) pos[q*WO*KT ...] in group order, group (g, l < K)
    // at pos[start[q][g*K1+l] ... start[q][g*K1+l+1])
    std::vector<int> start((size_t)RC * NG * K1), pos((size_t)RC * WO * KT);
    std::vector<float> total((size_t)NB * KT * K1 * CB, 0.f);
    for (int r0 = 0; r0 < R; r0 += RC) {
        const int rn = std::min(RC, R - r0);
        #pragma omp parallel
        {
            std::vector<int> lrow((size_t)KH * WP), urow(WO), fill(NG * K1);
            #pragma omp for schedule(static)
            for (int q = 0; q < rn; q++) {
                const int r = r0 + q;
                lc_label_rows(L, H, W, K, pad, KH, KW, r / HO, r % HO, WO, CB, lrow.data(), urow.data());
                int* st = start.data() + (size_t)q * NG * K1;
                std::fill(fill.begin(), fill.end(), 0);  // counting sort by (group, label)
                for (int x = 0; x < WO; x++) {
                    if (urow[x] >= 0) { fill[KT * K1 + urow[x] / CB]++; continue; }
                    for (int ky = 0; ky < KH; ky++)
                        for (int kx = 0; kx < KW; kx++) fill[(ky * KW + kx) * K1 + lrow[ky * WP + x + kx] / CB]++;
                }
                int run = q * WO * KT;
                for (int i = 0; i < NG * K1; i++) { st[i] = run; run += fill[i]; fill[i] = st[i]; }
                for (int x = 0; x < WO; x++) {
                    if (urow[x] >= 0) { pos[fill[KT * K1 + urow[x] / CB]++] = x * CB; continue; }
                    for (int ky = 0; ky < KH; ky++)
                        for (int kx = 0; kx < KW; kx++)
                            pos[fill[(ky * KW + kx) * K1 + lrow[ky * WP + x + kx] / CB]++] = x * CB;
                }
            }
            std::vector<float> tile_v((size_t)WO * CB, 0.f);
            float* tile = tile_v.data();
            #pragma omp for schedule(dynamic, 1)
            for (int b = 0; b < NB; b++) {
                const int ce = std::min(CB, C - b * CB);
                float* tot = total.data() + (size_t)b * KT * K1 * CB;
                for (int q = 0; q < rn; q++) {
                    const int r = r0 + q, n = r / HO, yo = r % HO;
                    lc_transpose(dy + (((size_t)n * C + b * CB) * HO + yo) * WO, (size_t)HO * WO,
                                 tile, CB, ce, WO, false);
                    const int* st = start.data() + (size_t)q * NG * K1;
                    for (int g = 0; g < NG; g++)
                        for (int l = 0; l < K; l++) {  // the sentinel K (padding) is no weight's input
                            const int i0 = st[g * K1 + l], i1 = st[g * K1 + l + 1];
                            if (i0 == i1) continue;
                            lc_vec acc[NV];
                            for (int j = 0; j < NV; j++) acc[j] = lc_vec{};
                            for (int i = i0; i < i1; i++) {
                                const float* d = tile + pos[i];
                                for (int j = 0; j < NV; j++) acc[j] += lc_ld(d + j * LC_VW);
                            }
                            for (int t = (g < KT ? g : 0); t < (g < KT ? g + 1 : KT); t++) {
                                float* tt = tot + ((size_t)t * K1 + l) * CB;
                                for (int j = 0; j < NV; j++) lc_st(tt + j * LC_VW, lc_ld(tt + j * LC_VW) + acc[j]);
                            }
                        }
                }
                if (r0 + rn == R)  // last chunk: this block's dw rows
                    for (int cc = 0; cc < ce; cc++)
                        for (int l = 0; l < K; l++)
                            for (int t = 0; t < KT; t++)
                                dw[(((size_t)(b * CB + cc)) * K + l) * KT + t] = tot[((size_t)t * K1 + l) * CB + cc];
            }
        }
    }
}
#pragma GCC pop_options
"""

# The gradient through the ReLU (dy where the output is positive, else 0) and its sum per (n, c) plane in
# double, for the bias gradient: one multithreaded pass instead of Jittor's two single-threaded ones.
_RELU_GRAD_SRC = r"""
@alias(dy, in0)
@alias(y, in1)
@alias(masked, out0)
@alias(rows, out1)
const size_t hw = (size_t)dy_shape2 * dy_shape3;
#pragma omp parallel for schedule(static)
for (int r = 0; r < dy_shape0 * dy_shape1; r++) {
    const float* d = dy_p + r * hw;
    const float* v = y_p + r * hw;
    float* m = masked_p + r * hw;
    double s = 0;
    for (size_t i = 0; i < hw; i++) { const float g = v[i] > 0.f ? d[i] : 0.f; m[i] = g; s += (double)g; }
    rows_p[r] = s;
}
"""

# The kernels' entry points; {kh}, {kw}, {cb} (template arguments) are filled in per kernel size.
_FORWARD_SRC = r"""
@alias(labels, in0)
@alias(weight, in1)
@alias(bias, in2)
@alias(result, out0)
lc_forward<{kh}, {kw}, {cb}>(labels_p, weight_p, bias_p, result_p,
    labels_shape0, labels_shape1, labels_shape2, weight_shape0, weight_shape1,
    (int)data["padding"], result_shape2, result_shape3, (int)data["relu"]);
"""

_WEIGHT_GRAD_SRC = r"""
@alias(labels, in0)
@alias(dy, in1)
@alias(dw, out0)
lc_weight_grad<{kh}, {kw}, {cb}>(labels_p, dy_p, dw_p,
    labels_shape0, labels_shape1, labels_shape2, dy_shape1, dw_shape1,
    (int)data["padding"], dy_shape2, dy_shape3);
"""


def _check(labels, kernel_size):
    kh, kw = kernel_size
    assert kh == kw and kh % 2 == 1, f"label_conv: odd square kernels only, got {kh}x{kw}"
    assert labels.ndim == 3, f"label_conv: labels must be [N, H, W], got {labels.shape}"


def one_hot(label, num_channels):
    """[B,1,H,W] int ids -> [B,num_channels,H,W] float32 (an id outside [0, num_channels): all zeros)."""
    ids = jt.arange(num_channels).reshape(1, num_channels, 1, 1)
    return (label.int32() == ids.int32()).float32()


_IDS_SRC = r"""
// ids of [N, C, H, W] semantics over their first K channels: the first channel holding a pixel's
// largest value (as argmax), K where that value is not > 0 (a pixel of no class); blocks of pixels in
// parallel, each read channel plane by channel plane
const int N = in0_shape0, C = in0_shape1, HW = in0_shape2 * in0_shape3, K = (int)data["k"];
const int B = 512, blocks = (HW + B - 1) / B;
#pragma omp parallel for schedule(static)
for (int job = 0; job < N * blocks; job++) {
    const int n = job / blocks, start = job % blocks * B, len = std::min(B, HW - start);
    const float* p = in0_p + (size_t)n * C * HW + start;
    float best[B];
    int id[B];
    for (int i = 0; i < len; i++) { best[i] = p[i]; id[i] = 0; }
    for (int c = 1; c < K; c++) {
        const float* q = p + (size_t)c * HW;
        for (int i = 0; i < len; i++) {
            const bool more = q[i] > best[i];
            best[i] = more ? q[i] : best[i];
            id[i] = more ? c : id[i];
        }
    }
    int* out = out0_p + (size_t)n * HW + start;
    for (int i = 0; i < len; i++) out[i] = best[i] > 0.f ? id[i] : K;
}
"""


def label_ids(semantics, num_ids):
    """[N, H, W] int32 label ids of NCHW semantics that are one-hot over their first `num_ids` channels:
    the hot channel, or num_ids for a pixel with none (all zeros). One multithreaded pass on the CPU
    (Jittor's argmax over channels runs on one thread)."""
    n, _, h, w = semantics.shape
    if jt.flags.use_cuda:
        ids, hot = jt.argmax(semantics[:, :num_ids], dim=1)
        return jt.ternary(hot > 0, ids.int32(), jt.array(num_ids, dtype="int32")).stop_grad()
    return jt.code((n, h, w), "int32", [semantics.float32()], cpu_header="#include <algorithm>",
                   cpu_src=_IDS_SRC, data={"k": int(num_ids)}).stop_grad()


def _onehot(labels, num_labels):
    return one_hot(labels[:, None], num_labels)


def _kernel(src, kh, kw):
    """An entry point's source with its template arguments filled in."""
    return src.replace("{kh}", str(kh)).replace("{kw}", str(kw)).replace("{cb}", str(_CB))


def label_conv_weight_grad(labels, dy, num_labels, kernel_size, padding):
    """dW [C, num_labels, k, k] of the convolution of onehot(labels, num_labels) given the output
    gradient dy [N, C, Ho, Wo] (stride 1, zero padding `padding`; `kernel_size` an int or (k, k))."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    _check(labels, (kh, kw))
    labels = labels.int32()
    n, c, ho, wo = dy.shape
    assert n == labels.shape[0] and ho == labels.shape[1] + 2 * padding - kh + 1 \
        and wo == labels.shape[2] + 2 * padding - kw + 1, (labels.shape, dy.shape, padding)
    if jt.flags.use_cuda:
        x = _onehot(labels, num_labels)
        w = jt.zeros((c, num_labels, kh, kw), "float32")
        return jt.grad((jt.nn.conv2d(x, w, None, 1, padding) * dy.detach()).sum(), w)
    return jt.code((c, num_labels, kh, kw), "float32", [labels, dy.float32()],
                   cpu_header=_HEADER, cpu_src=_kernel(_WEIGHT_GRAD_SRC, kh, kw), data={"padding": float(padding)})


def _forward(labels, weight, bias, padding, relu):
    c, _, kh, kw = weight.shape
    if bias is None:
        bias = jt.zeros((c,), "float32")
    n, h, w = labels.shape
    shape = (n, c, h + 2 * padding - kh + 1, w + 2 * padding - kw + 1)
    return jt.code(shape, "float32", [labels, weight, bias], cpu_header=_HEADER,
                   cpu_src=_kernel(_FORWARD_SRC, kh, kw), data={"padding": float(padding), "relu": int(relu)})


class _LabelConv(jt.Function):
    def execute(self, labels, weight, bias, padding, relu):
        y = _forward(labels, weight, bias, padding, relu)
        # with the ReLU, its output (the next layer's input, kept anyway) says where the gradient passes
        self.saved = (labels, weight.shape, padding, y if relu else None)
        return y

    def grad(self, dy):
        labels, (_, k, kh, kw), padding, y = release_saved(self)
        dy = dy.float32()
        if y is not None:
            dy, rows = jt.code([dy.shape, dy.shape[:2]], ["float32", "float64"], [dy, y], cpu_src=_RELU_GRAD_SRC)
            db = rows.sum(0).float32()
        else:
            db = dy.sum(dims=(0, 2, 3))
        dw = None if self.input_mask[1] == -2 else label_conv_weight_grad(labels, dy, k, (kh, kw), padding)
        return None, dw, None if self.input_mask[2] < 0 else db, None, None


def label_conv(labels, weight, bias=None, padding=1, relu=False):
    """`jt.nn.conv2d(onehot(labels, K), weight, bias, stride=1, padding=padding)` computed from the
    int labels [N, H, W] (values in [0, K), K = weight.shape[1]) without building the one-hot map,
    followed by `jt.nn.relu` when `relu` (in the same pass, forward and backward).
    weight float32 [C, K, k, k] (k odd), bias [C] or None; returns float32 [N, C, Ho, Wo]
    (Ho = H + 2*padding - k + 1, = H for padding = k // 2). Differentiable w.r.t. weight and bias."""
    _check(labels, weight.shape[2:])
    if jt.flags.use_cuda:
        out = jt.nn.conv2d(_onehot(labels, weight.shape[1]), weight, bias, 1, padding)
        return jt.nn.relu(out) if relu else out
    labels = labels.int32().stop_grad()
    if jt.flags.no_grad:  # inference: the kernel alone, keeping nothing for a backward
        return _forward(labels, weight.float32(), bias, padding, relu)
    return _LabelConv.apply(labels, weight.float32(), bias, padding, bool(relu))
