"""SPADE's and FADE's modulated normalisation, and plain batch/instance norm, as multithreaded CPU passes.

A SPADE layer computes y = norm(x) * (1 + gamma) + beta, gamma = conv_g(h) + bias_g, beta = conv_b(h) +
bias_b, usually followed by leaky_relu(y, 0.2). Written as Jittor ops that is about ten single-threaded
passes over full-size tensors, forward and backward, each keeping an intermediate for the backward.
Here (`jt.code` kernels; Jittor compiles them with OpenMP, parallel over the (n, c) planes):

* `sums`: what the batch (or instance) mean and biased variance come from, summed in float64 as
  PyTorch's CPU batch norm does: one pass for the sums, one for the centred squares
  (`normalization.batch_statistics`; an MPI all-reduce after each for synchronised batch norm). Without
  MPI, `statistics` does both and the arithmetic after them in one kernel (the same values to the bit;
  half a dozen small ops fewer per layer and forward);
* `modulate` forward: one pass reading x and the [N, 2C, H, W] output of *one* convolution that
  computes gamma and beta together (their biases added here), writing y (activated);
* its backward: one pass for the two per-channel sums batch norm's gradient needs (all-reduced under
  MPI), one writing dx and the [N, 2C, H, W] gradient of the gamma/beta convolution. Only x, 1 + gamma
  (written by the forward pass) and y are kept for it (y is the next convolution's input, kept
  anyway); the normalised x is recomputed, and the convolution's output is released.

The same for a plain batch or instance norm (`normalize`: the discriminator's, the encoder's, TSIT's
content stream, each with the leaky ReLU after it): y = x * alpha + beta with batch norm's affine folded
into alpha and beta, one pass forward, the two sums and dx backward, keeping x and y only.

Rounding: every float32 operation is PyTorch's, in PyTorch's order, without fused multiply-adds except
where PyTorch's own kernel has one (`affine`, below). The unfused path, normalization.py, has the same
order, but Jittor's -Ofast element-wise kernels contract some products and sums into FMAs; so the result
equals the unfused path to float32 rounding and PyTorch's more closely (docs/tsit.md#parity). On CUDA
(`jt.flags.use_cuda`) or with JSPADE_FUSED_NORM=0 the unfused path runs instead (Jittor fuses
element-wise ops on the GPU itself).
"""
import os
from collections import namedtuple

from jspade.runtime import cpu_kernel, jt, release_saved

_enabled = os.environ.get("JSPADE_FUSED_NORM", "1") != "0"


def set_enabled(enabled):
    """Fused kernels on (the default) or off (the layer-by-layer Jittor ops) from now on."""
    global _enabled
    _enabled = bool(enabled)


def enabled():
    return _enabled and not jt.flags.use_cuda


# What `modulate` needs of a normalisation: mean and 1/std per statistics group (a channel for batch
# norm, an (image, channel) plane for instance norm), float32; the element count per group; whether the
# backward sums are all-reduced over MPI ranks; whether mean/invstd are the batch's own (their gradient
# terms then enter dx) rather than running statistics (constants).
Statistics = namedtuple("Statistics", "mean invstd count synced batch per_instance")

_HEADER = r"""
#include <cmath>
#include <cstddef>

namespace fused_norm {

// planes of the statistics group s: [N, C, HW] data, plane (n, c) = row n * C + c; a group is one
// plane (instance norm) or the N planes of channel s (batch norm)
struct Groups {
    int N, C, HW, per_instance;
    int groups() const { return per_instance ? N * C : C; }
    int planes() const { return per_instance ? 1 : N; }
    size_t row(int s, int j) const { return per_instance ? (size_t)s : (size_t)j * C + s; }
};

// out[s] = sum of x over group s (mode 0), or of (x - mean[s])^2 with the difference and the square
// rounded to float as PyTorch's CPU kernel rounds them (mode 1); in double
static void sums(const float* x, const float* mean, double* out, Groups g, int mode) {
    #pragma omp parallel for schedule(dynamic, 4)
    for (int s = 0; s < g.groups(); s++) {
        double acc = 0;
        const float m = mode ? mean[s] : 0.f;
        for (int j = 0; j < g.planes(); j++) {
            const float* p = x + g.row(s, j) * g.HW;
            if (mode == 0) {
                for (int i = 0; i < g.HW; i++) acc += (double)p[i];
            } else {
                for (int i = 0; i < g.HW; i++) { const float d = p[i] - m; acc += (double)(d * d); }
            }
        }
        out[s] = acc;
    }
}

// The batch (or instance) statistics of each group s, as normalization.batch_statistics computes them
// from the two sums above: mean = float(sum / count), var = float(float(sum of (x - mean)^2) / count),
// invstd = float(1 / sqrt(var + eps)) (var and eps in double); both passes over a group in one go
static inline void group_statistics(const float* x, Groups g, int s, double eps, float& mean, float& var,
                                    float& invstd) {
    const double count = (double)g.planes() * g.HW;
    double total = 0, squares = 0;
    for (int j = 0; j < g.planes(); j++) {
        const float* p = x + g.row(s, j) * g.HW;
        for (int i = 0; i < g.HW; i++) total += (double)p[i];
    }
    const float m = (float)(total / count);
    for (int j = 0; j < g.planes(); j++) {
        const float* p = x + g.row(s, j) * g.HW;
        for (int i = 0; i < g.HW; i++) { const float d = p[i] - m; squares += (double)(d * d); }
    }
    const double v = (double)(float)squares / count;
    mean = m;
    var = (float)v;
    invstd = (float)(1.0 / std::sqrt(v + eps));
}

static void statistics(const float* x, float* mean, float* var, float* invstd, Groups g, double eps) {
    #pragma omp parallel for schedule(dynamic, 4)
    for (int s = 0; s < g.groups(); s++) group_statistics(x, g, s, eps, mean[s], var[s], invstd[s]);
}

// y = (x * a + b0) * (1 + gamma) + beta, a = invstd, b0 = 0 - mean * a (batch norm's alpha and beta),
// gamma/beta = the modulation convolution's output planes (n, c) and (n, C + c) plus their biases;
// then leaky ReLU with `slope` when `leaky`. With `gamma1` (training), 1 + gamma is written there too:
// all the backward needs of gb, which can then be released.
static void forward(const float* x, const float* gb, const float* bias, const float* mean,
                    const float* invstd, float* y, float* gamma1, Groups g, int leaky, float slope) {
    const int C = g.C, HW = g.HW;
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < g.N * C; r++) {
        const int n = r / C, c = r % C, s = g.per_instance ? r : c;
        const float a = invstd[s], b0 = 0.f - mean[s] * a, bg = bias[c], bb = bias[C + c];
        const float* xp = x + (size_t)r * HW;
        const float* gp = gb + ((size_t)n * 2 * C + c) * HW;
        const float* bp = gp + (size_t)C * HW;
        float* yp = y + (size_t)r * HW;
        float* g1 = gamma1 ? gamma1 + (size_t)r * HW : nullptr;
        for (int i = 0; i < HW; i++) {
            const float normalized = xp[i] * a + b0;
            const float t = 1.f + (gp[i] + bg);
            const float v = normalized * t + (bp[i] + bb);
            yp[i] = (leaky && !(v > 0.f)) ? v * slope : v;
            if (gamma1) g1[i] = t;
        }
    }
}

// out[s] = sum of dn, out[S + s] = sum of (x - mean) * dn over group s, in double (in 8 partial sums:
// a sum's latency, not its bandwidth, bounded one running sum); dn = dy' * (1 + gamma)
// when MODULATED, else dy', dy' the gradient reaching y (through the leaky ReLU: y > 0 exactly where its
// input was)
template <bool MODULATED>
static void backward_sums(const float* x, const float* gamma1, const float* y, const float* dy,
                          const float* mean, double* out, Groups g, int leaky, float slope) {
    const int HW = g.HW, S = g.groups();
    constexpr int L = 8;  // independent partial sums (one vector of doubles), added at the end
    #pragma omp parallel for schedule(dynamic, 4)
    for (int s = 0; s < S; s++) {
        double sum_dn[L] = {0}, dot[L] = {0};
        const float m = mean[s];
        for (int j = 0; j < g.planes(); j++) {
            const size_t r = g.row(s, j);
            const float* xp = x + r * HW;
            const float* yp = y + r * HW;
            const float* dp = dy + r * HW;
            const float* tp = MODULATED ? gamma1 + r * HW : nullptr;
            for (int i0 = 0; i0 < HW; i0 += L) {
                const int lanes = HW - i0 < L ? HW - i0 : L;
                for (int k = 0; k < lanes; k++) {
                    const int i = i0 + k;
                    const float d = (leaky && !(yp[i] > 0.f)) ? dp[i] * slope : dp[i];
                    const float dn = MODULATED ? d * tp[i] : d;
                    sum_dn[k] += (double)dn;
                    dot[k] += (double)((xp[i] - m) * dn);
                }
            }
        }
        double total_dn = 0, total_dot = 0;
        for (int k = 0; k < L; k++) { total_dn += sum_dn[k]; total_dot += dot[k]; }
        out[s] = total_dn;
        out[S + s] = total_dot;
    }
}

// dx = (dn - grad_mean - (x - mean) * k) * invstd (batch norm's backward; grad_mean = k = 0 for
// running statistics); dgamma = dy' * normalized, dbeta = dy' (dy' the gradient reaching y); and
// their sums per plane, in double, for the biases' gradients: dbias_rows[n, c] and [n, C + c]
static void backward(const float* x, const float* gamma1, const float* y, const float* dy,
                     const float* mean, const float* invstd, const float* grad_mean, const float* k,
                     float* dx, float* dgb, double* dbias_rows, Groups g, int leaky, float slope) {
    const int C = g.C, HW = g.HW;
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < g.N * C; r++) {
        const int n = r / C, c = r % C, s = g.per_instance ? r : c;
        const float m = mean[s], a = invstd[s], b0 = 0.f - m * a, gm = grad_mean[s], ks = k[s];
        const float* xp = x + (size_t)r * HW;
        const float* yp = y + (size_t)r * HW;
        const float* dp = dy + (size_t)r * HW;
        const float* tp = gamma1 + (size_t)r * HW;
        float* dxp = dx + (size_t)r * HW;
        float* dgp = dgb + ((size_t)n * 2 * C + c) * HW;
        float* dbp = dgp + (size_t)C * HW;
        double sum_dg = 0, sum_db = 0;
        for (int i = 0; i < HW; i++) {
            const float d = (leaky && !(yp[i] > 0.f)) ? dp[i] * slope : dp[i];
            const float dn = d * tp[i];
            dxp[i] = (dn - gm - (xp[i] - m) * ks) * a;
            const float dg = d * (xp[i] * a + b0);
            dgp[i] = dg;
            dbp[i] = d;
            sum_dg += (double)dg;
            sum_db += (double)d;
        }
        dbias_rows[(size_t)n * 2 * C + c] = sum_dg;
        dbias_rows[(size_t)n * 2 * C + C + c] = sum_db;
    }
}

// A batch or instance norm with its affine folded in, y = x * alpha[s] + beta[s] (alpha = invstd * w,
// beta = b - mean * alpha, as PyTorch's CPU kernel), then leaky ReLU with `slope` when `leaky`. That
// kernel's multiply-add is contracted into one fused multiply-add by its compiler (as by Jittor's
// -Ofast): std::fma matches it (without, TSIT's eval forward moves from 4.1e-3 to 5.0e-3 off the archive).
// Then + `residual` where given (a residual block's sum, in the same pass; forward only).
static inline void affine_plane(const float* xp, float a, float b, float* yp, int HW, int leaky, float slope,
                                const float* residual) {
    for (int i = 0; i < HW; i++) {
        const float v = std::fma(xp[i], a, b);
        yp[i] = (leaky && !(v > 0.f)) ? v * slope : v;
    }
    if (residual)
        for (int i = 0; i < HW; i++) yp[i] = yp[i] + residual[i];
}

static void affine(const float* x, const float* alpha, const float* beta, float* y, Groups g, int leaky,
                   float slope, const float* residual = nullptr) {
    const int C = g.C, HW = g.HW;
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < g.N * C; r++) {
        const int s = g.per_instance ? r : r % C;
        const size_t at = (size_t)r * HW;
        affine_plane(x + at, alpha[s], beta[s], y + at, HW, leaky, slope, residual ? residual + at : nullptr);
    }
}

// An instance norm's forward alone (a rendering): per (n, c) plane its statistics, then the affine with
// alpha = invstd, beta = 0 - mean * invstd (+ residual), the plane still in the cache for its second and
// third pass: the values of `statistics` and `affine` above, in one kernel instead of two (and the small
// ops between them).
static void instance_forward(const float* x, float* y, const float* residual, Groups g, double eps, int leaky,
                             float slope) {
    #pragma omp parallel for schedule(dynamic, 4)
    for (int r = 0; r < g.N * g.C; r++) {
        float mean, var, invstd;
        group_statistics(x, g, r, eps, mean, var, invstd);
        const size_t at = (size_t)r * g.HW;
        affine_plane(x + at, invstd, 0.f - mean * invstd, y + at, g.HW, leaky, slope,
                     residual ? residual + at : nullptr);
    }
}

// its dx = (dy' - grad_mean - (x - mean) * k) * scale, scale = invstd * w (grad_mean = k = 0 for running
// statistics), dy' the gradient reaching y
static void affine_backward(const float* x, const float* y, const float* dy, const float* mean,
                            const float* grad_mean, const float* k, const float* scale, float* dx, Groups g,
                            int leaky, float slope) {
    const int C = g.C, HW = g.HW;
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < g.N * C; r++) {
        const int s = g.per_instance ? r : r % C;
        const float m = mean[s], gm = grad_mean[s], ks = k[s], a = scale[s];
        const float* xp = x + (size_t)r * HW;
        const float* yp = y + (size_t)r * HW;
        const float* dp = dy + (size_t)r * HW;
        float* dxp = dx + (size_t)r * HW;
        for (int i = 0; i < HW; i++) {
            const float d = (leaky && !(yp[i] > 0.f)) ? dp[i] * slope : dp[i];
            dxp[i] = (d - gm - (xp[i] - m) * ks) * a;
        }
    }
}

}  // namespace fused_norm
"""

_GROUPS = 'fused_norm::Groups{(int)data["n"], (int)data["c"], (int)data["hw"], (int)data["per_instance"]}'

_SUMS_SRC = f'fused_norm::sums(in0_p, in1_p, out0_p, {_GROUPS}, (int)data["mode"]);'
_FORWARD_SRC = f'fused_norm::forward(in0_p, in1_p, in2_p, in3_p, in4_p, out0_p, {{gamma1}}, {_GROUPS}, ' \
               '(int)data["leaky"], (float)data["slope"]);'
_BACKWARD_SUMS_SRC = f'fused_norm::backward_sums<true>(in0_p, in1_p, in2_p, in3_p, in4_p, out0_p, {_GROUPS}, ' \
                     '(int)data["leaky"], (float)data["slope"]);'
_AFFINE_BACKWARD_SUMS_SRC = f'fused_norm::backward_sums<false>(in0_p, nullptr, in1_p, in2_p, in3_p, out0_p, ' \
                            f'{_GROUPS}, (int)data["leaky"], (float)data["slope"]);'
_AFFINE_SRC = f'fused_norm::affine(in0_p, in1_p, in2_p, out0_p, {_GROUPS}, (int)data["leaky"], (float)data["slope"]);'
_AFFINE_RESIDUAL_SRC = _AFFINE_SRC[:-2] + ", in3_p);"
_INSTANCE_SRC = f'fused_norm::instance_forward(in0_p, out0_p, {{residual}}, {_GROUPS}, (double)data["eps"], ' \
                '(int)data["leaky"], (float)data["slope"]);'
_AFFINE_BACKWARD_SRC = f'fused_norm::affine_backward(in0_p, in1_p, in2_p, in3_p, in4_p, in5_p, in6_p, out0_p, ' \
                       f'{_GROUPS}, (int)data["leaky"], (float)data["slope"]);'
_BACKWARD_SRC = f'fused_norm::backward(in0_p, in1_p, in2_p, in3_p, in4_p, in5_p, in6_p, in7_p, out0_p, out1_p, ' \
                f'out2_p, {_GROUPS}, (int)data["leaky"], (float)data["slope"]);'

# no fused multiply-adds: each float32 product and sum rounded as the unfused ops (and PyTorch) round it
_FLAGS = "-ffp-contract=off"


def _code(shapes, dtypes, inputs, src, data):
    return cpu_kernel(shapes, dtypes, inputs, _HEADER, src, data, _FLAGS)


def _groups(x, per_instance):
    n, c = x.shape[:2]
    return {"n": n, "c": c, "hw": x.numel() // (n * c), "per_instance": int(per_instance)}


def sums(x, per_instance, mean=None):
    """float64 per-group sums of NCHW `x` (groups: channels, or (n, c) planes when `per_instance`);
    with `mean` (float32, one per group), of the centred squares instead."""
    data = _groups(x, per_instance)
    size = data["n"] * data["c"] if per_instance else data["c"]
    data["mode"] = 0 if mean is None else 1
    mean = jt.zeros((size,), "float32") if mean is None else mean
    return _code((size,), "float64", [x, mean], _SUMS_SRC, data)


def statistics(x, eps):
    """(mean, biased variance, 1 / sqrt(variance + eps)) per channel of NCHW `x`, float32, in one kernel:
    the values `sums` and normalization.batch_statistics' float64 arithmetic give, to the bit."""
    data = _groups(x, False)
    data["eps"] = eps
    c = data["c"]
    return _code([(c,)] * 3, ["float32"] * 3, [x], 'fused_norm::statistics(in0_p, out0_p, out1_p, out2_p, '
                 f'{_GROUPS}, (double)data["eps"]);', data)


def _data(x, stats, slope):
    data = _groups(x, stats.per_instance)
    data.update(leaky=int(slope is not None), slope=float(slope or 0.0))
    return data


def _forward(x, gb, bias, mean, invstd, data, gamma1=False):
    """y, or [y, 1 + gamma] with `gamma1`."""
    shapes = [x.shape, x.shape] if gamma1 else x.shape
    src = _FORWARD_SRC.replace("{gamma1}", "out1_p" if gamma1 else "nullptr")
    return _code(shapes, ["float32"] * 2 if gamma1 else "float32", [x, gb, bias, mean, invstd], src, data)


def _statistics_terms(both, invstd, stats):
    """(k, grad_mean) of batch norm's input gradient, as normalization._BatchNormFunction.grad computes
    them in float32, from this rank's backward sums `both` = [sum of dn, sum of (x - mean) * dn] (float64;
    all-reduced here under sync batch norm); zeros for running statistics (constants: no such terms)."""
    s = stats.mean.shape[0]
    if not stats.batch:
        zeros = jt.zeros((s,), "float32")
        return zeros, zeros
    if stats.synced:
        both = both.mpi_all_reduce("add")
    sum_dn, dot = both[:s], both[s:]
    return dot.float32() * invstd * invstd / stats.count, (sum_dn / stats.count).float32()


class _Modulate(jt.Function):
    def execute(self, x, gb, bias, mean, invstd, stats, slope):
        data = _data(x, stats, slope)
        y, gamma1 = _forward(x, gb, bias, mean, invstd, data, gamma1=True)
        # kept for the backward: x, 1 + gamma and y (the next convolution's input, kept anyway); not gb
        self.saved = (x, gamma1, mean, invstd, y, stats, data)
        return y

    def grad(self, dy):
        x, gamma1, mean, invstd, y, stats, data = release_saved(self)
        dy = dy.float32()
        both = None
        if stats.batch:  # the sums are needed only for the batch statistics' gradient terms
            both = _code((2 * mean.shape[0],), "float64", [x, gamma1, y, dy, mean], _BACKWARD_SUMS_SRC, data)
        k, grad_mean = _statistics_terms(both, invstd, stats)
        n, c = x.shape[:2]
        dx, dgb, dbias_rows = _code([x.shape, (n, 2 * c, *x.shape[2:]), (n, 2 * c)], ["float32", "float32", "float64"],
                                    [x, gamma1, y, dy, mean, invstd, grad_mean, k], _BACKWARD_SRC, data)
        return dx, dgb, dbias_rows.sum(0).float32(), None, None, None, None


def modulate(x, gb, bias, stats, slope=None):
    """leaky_relu(norm(x) * (1 + gamma) + beta, slope) (no activation when `slope` is None), where
    norm(x) = (x - stats.mean) * stats.invstd and [gamma, beta] = gb + bias: `gb` [N, 2C, H, W] the
    output of the one convolution that predicts both (without its bias), `bias` [2C]. Differentiable
    w.r.t. x (through the statistics too when stats.batch), gb and bias; under `jt.no_grad()` (inference,
    the discriminator step's fake) the forward kernel alone, keeping nothing."""
    assert gb.shape[1] == 2 * x.shape[1] and gb.shape[0] == x.shape[0] and gb.shape[2:] == x.shape[2:], \
        (x.shape, gb.shape)
    args = (x.float32(), gb.float32(), bias.float32(), stats.mean.float32().stop_grad(),
            stats.invstd.float32().stop_grad())
    if jt.flags.no_grad:
        return _forward(*args, _data(x, stats, slope))
    return _Modulate.apply(*args, stats, slope)


def _affine_terms(weight, bias, stats):
    """alpha, beta of y = x * alpha + beta: the statistics with the affine folded in, as PyTorch's kernel."""
    alpha = stats.invstd if weight is None else stats.invstd * weight
    return alpha, (0 if bias is None else bias) - stats.mean * alpha


class _Normalize(jt.Function):
    def execute(self, x, weight, bias, stats, slope):
        data = _data(x, stats, slope)
        alpha, beta = _affine_terms(weight, bias, stats)
        y = _code(x.shape, "float32", [x, alpha, beta], _AFFINE_SRC, data)
        # kept for the backward: x and y (the next layer's input, kept anyway)
        self.saved = (x, y, alpha, stats, data, weight is not None, bias is not None)
        return y

    def grad(self, dy):
        x, y, scale, stats, data, has_weight, has_bias = release_saved(self)
        mean, invstd, dy = stats.mean, stats.invstd, dy.float32()
        s = mean.shape[0]
        both = _code((2 * s,), "float64", [x, y, dy, mean], _AFFINE_BACKWARD_SUMS_SRC, data)
        sum_dy, dot = both[:s], both[s:]
        # this rank's share for the weight and bias (the optimiser averages them like any other
        # parameter's), the union batch's sums for the input: as normalization._BatchNormFunction.grad
        grad_weight = dot.float32() * invstd if has_weight else None
        grad_bias = sum_dy.float32() if has_bias else None
        k, grad_mean = _statistics_terms(both, invstd, stats)
        dx = _code(x.shape, "float32", [x, y, dy, mean, grad_mean, k, scale], _AFFINE_BACKWARD_SRC, data)
        return dx, grad_weight, grad_bias, None, None


def normalize(x, stats, weight=None, bias=None, slope=None, residual=None):
    """leaky_relu(norm(x) * weight + bias, slope) (no activation when `slope` is None; no affine where
    weight/bias are None), norm(x) = (x - stats.mean) * stats.invstd: a batch or instance norm layer and
    the activation after it in one pass forward, two backward, keeping only x and the output.
    weight and bias are per channel (batch norm's affine; not with per-instance statistics).
    + `residual` (x's shape) where given: under jt.no_grad in the same pass."""
    assert weight is None or not stats.per_instance
    args = (x.float32(), None if weight is None else weight.float32(), None if bias is None else bias.float32())
    stats = stats._replace(mean=stats.mean.float32().stop_grad(), invstd=stats.invstd.float32().stop_grad())
    if residual is not None and jt.flags.no_grad and residual.dtype == "float32" \
            and tuple(residual.shape) == tuple(x.shape):
        alpha, beta = _affine_terms(args[1], args[2], stats)
        return _code(x.shape, "float32", [args[0], alpha, beta, residual], _AFFINE_RESIDUAL_SRC, _data(x, stats, slope))
    y = _Normalize.apply(*args, stats, slope)  # under jt.no_grad its forward alone
    return y if residual is None else y + residual


def instance_norm_forward(x, eps, slope=None, residual=None):
    """An instance norm's forward alone (no gradient: a rendering), leaky_relu(norm(x), slope) (no
    activation when `slope` is None), + `residual` (x's shape) where given, in one kernel: the values of
    normalize() with the statistics of normalization.InstanceNorm2d, to the bit."""
    data = _groups(x, True)
    data.update(eps=eps, leaky=int(slope is not None), slope=float(slope or 0.0))
    inputs = [x.float32()] + ([] if residual is None else [residual.float32()])
    src = _INSTANCE_SRC.replace("{residual}", "nullptr" if residual is None else "in1_p")
    return _code(x.shape, "float32", inputs, src, data)


# Spectral normalisation's W / sigma (normalization.SpectralNorm) in training, sigma = u^T W v with u and
# v held constant. Its forward is Jittor's division (TSIT's reference archive has an eval forward that
# turns a last-bit change of these weights, through the running statistics, into a failure: docs/tsit.md).
# Its backward, in Jittor's ops several single-threaded passes over every weight, is one multithreaded
# kernel of two passes: c = sum(dWn * W), then dW = dWn / sigma - c / sigma^2 * u v^T (the division's
# gradient and sigma's, which would otherwise come back through the matrix products). Compiled so that
# the division stays a division, as PyTorch's.
_SPECTRAL_HEADER = r"""
#include <vector>
namespace spectral {
static void backward(const float* w, const float* sigma, const float* u, const float* v, const float* dwn,
                     float* dw, int rows, long long cols) {
    const float s = sigma[0];
    std::vector<double> row_sums(rows);  // per row, then added in row order: the same sum on every run
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        double row = 0;
        for (long long k = 0; k < cols; k++) row += (double)dwn[r * cols + k] * w[r * cols + k];
        row_sums[r] = row;
    }
    double c = 0;
    for (int r = 0; r < rows; r++) c += row_sums[r];
    const float dsigma = (float)(-c / ((double)s * s));
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float ur = dsigma * u[r];
        for (long long k = 0; k < cols; k++) dw[r * cols + k] = dwn[r * cols + k] / s + ur * v[k];
    }
}
}  // namespace spectral
"""


class _SpectralDivide(jt.Function):
    def execute(self, w, sigma, u, v):
        self.saved = (w, sigma, u, v)
        return w / sigma

    def grad(self, dwn):
        w, sigma, u, v = release_saved(self)
        rows = w.shape[0]
        dw = cpu_kernel(w.shape, "float32", [w, sigma, u, v, dwn.float32()], _SPECTRAL_HEADER,
                        'spectral::backward(in0_p, in1_p, in2_p, in3_p, in4_p, out0_p, (int)data["rows"], '
                        '(long long)data["cols"]);', {"rows": rows, "cols": w.numel() // rows},
                        "-fno-unsafe-math-optimizations")
        return dw, None, None, None


def spectral_divide(w, sigma, u, v):
    """w / sigma for a weight `w` (its first axis: the rows of the matrix W in u^T W v), sigma = u^T W v a
    detached 1-element Var computed from w, u and v (constants): the gradient for w includes sigma's."""
    return _SpectralDivide.apply(w, sigma.reshape(1), u, v)
