"""3x3 convolutions by Winograd's minimal filtering, F(4x4, 3x3), through Jittor's own oneDNN.

A stride-1 3x3 convolution computes each 4x4 output tile from a 6x6 input tile with 36 multiplications
per input/output channel pair instead of 144 (Lavin & Gray, CVPR 2016): the same sums, regrouped, so
the result differs from the direct convolution only by float32 rounding. oneDNN implements it for the
forward pass and both backward passes (`jit_wino_4x3`, AVX-512 CPUs), but Jittor's `mkl_conv` ops ask for
`convolution_auto`, which oneDNN 2.2 always answers with the direct algorithm. These ops ask for Winograd
and fall back to the direct algorithm where oneDNN has no Winograd implementation (e.g. without
AVX-512), so they always run.

About twice as fast per layer on AVX-512, with forward rounding a few times the direct algorithm's and
weight gradients closer to float64: the measurements are in docs/performance.md.

Where Winograd does not pay (`winograd_pays`: small maps, few input channels) the same passes run oneDNN's
direct algorithm, as Jittor's convolution does (forward and input gradient equal to the bit), but with
their temporaries in buffers kept between calls: Jittor's op allocates its reordered weights afresh on
every call, and for a 1024x1024 layer those 38 MB fault in page by page each time. Each pass's oneDNN
primitive and reorders are made once per shape and kept (a `Plan`): made per call they cost 20-100 us,
more than the convolution on the decoders' smallest maps.

While rendering (`kept_weights.keeping_inference_weights`), a 3x3 convolution keeps its weight in the
form oneDNN's inference primitive reads (`prepare`): on small maps in the direct algorithm's layout
(Jittor's convolution reorders the weight on every call, which for SPADE's 1024-channel layers at ngf 64
costs more than the convolution itself on a 6x8 map), and for wide layers on mid-size maps as Winograd's
transformed weights (the training primitive transforms them on every call). A layer whose weight never
trains (`Conv2d(frozen=True)`: VGG19's widest) keeps them in training as well.

1x1 convolutions (the learned shortcuts) are one oneDNN matrix product per image, forward and backward
(`pointwise`): Jittor's convolution reorders their inputs and outputs into blocked layouts and back on
every call, which costs several times the product itself.

`conv2d` is `jt.nn.conv2d` with the same arguments. On CUDA (cuDNN picks its own algorithms), with
`set_enabled(False)` or with the environment variable JSPADE_WINOGRAD=0 (the direct algorithm's
rounding, e.g. to compare with it), it *is* that call. Measurements: docs/performance.md.
"""
import contextlib
import functools
import glob
import os

from jspade.runtime import jt, release_saved, with_epilogue
from jittor import nn

from jspade.models import kept_weights, narrow_conv

_enabled = os.environ.get("JSPADE_WINOGRAD", "1") != "0"


def set_enabled(enabled):
    """Winograd on (the default) or off (Jittor's direct convolution) for the convolutions run from now on."""
    global _enabled
    _enabled = bool(enabled)


@contextlib.contextmanager
def direct():
    """Within this block, Jittor's direct convolutions (a network whose outputs amplify rounding)."""
    global _enabled
    saved, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = saved


def enabled():
    """Whether 3x3 convolutions go through Winograd here: on the CPU, with Jittor's oneDNN found."""
    return _enabled and not jt.flags.use_cuda and _dnnl_include() is not None


@functools.lru_cache(maxsize=None)
def _dnnl_include():
    """The include folder of the oneDNN that Jittor loaded for its own convolutions (its symbols are
    global in the process, so the kernels below link against it without a library flag)."""
    if os.environ.get("mkl_include_path"):  # Jittor's own override
        found = [os.path.join(os.environ["mkl_include_path"], "oneapi", "dnnl", "dnnl.hpp")]
    else:
        import jittor_utils  # Jittor's notion of the home folder (JITTOR_HOME), where it keeps oneDNN
        home = os.path.join(jittor_utils.home(), ".cache", "jittor", "mkl")
        found = sorted(glob.glob(os.path.join(home, "dnnl*", "include", "oneapi", "dnnl", "dnnl.hpp")))
    found = [f for f in found if os.path.isfile(f)]
    return os.path.dirname(os.path.dirname(os.path.dirname(found[0]))) if found else None


_HEADER = r"""
#include "oneapi/dnnl/dnnl.hpp"
#include <algorithm>
#include <array>
#include <cstdlib>
#include <new>
#include <omp.h>
#include <map>
#include <stdexcept>
#include <unordered_map>
#include <vector>

namespace wino {
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

static engine& cpu() { static engine eng(engine::kind::cpu, 0); return eng; }

struct Shapes {
    memory::dims src, wei, dst, strides{1, 1}, dil{0, 0}, pad{1, 1};
    memory::desc any(const memory::dims& d) const { return memory::desc(d, dt::f32, tag::any); }
};

static Shapes shapes(int n, int ic, int oc, int h, int w) {
    Shapes s;
    s.src = {n, ic, h, w}; s.wei = {oc, ic, 3, 3}; s.dst = {n, oc, h, w};
    return s;
}

static primitive_attr user_scratchpad() {
    primitive_attr attr;
    attr.set_scratchpad_mode(scratchpad_mode::user);
    return attr;
}

// A forward primitive descriptor (forward_training: the backward ones need it as a hint); Winograd when
// `wino` and oneDNN has it, else direct (`alg` says which).
static convolution_forward::primitive_desc forward_pd(const Shapes& s, prop_kind prop, int wino, algorithm& alg) {
    for (algorithm a : {algorithm::convolution_winograd, algorithm::convolution_direct}) {
        if (a == algorithm::convolution_winograd && !wino) continue;
        try {
            auto d = convolution_forward::desc(prop, a, s.any(s.src), s.any(s.wei), s.any(s.dst), s.strides, s.dil,
                                               s.pad, s.pad);
            alg = a;
            return convolution_forward::primitive_desc(d, user_scratchpad(), cpu());
        } catch (error&) {}
    }
    throw std::runtime_error("conv3x3: oneDNN has no convolution for this shape");
}

static convolution_forward::primitive_desc inference_pd(const Shapes& s, int wino) {
    algorithm alg;
    return forward_pd(s, prop_kind::forward_inference, wino, alg);
}

// oneDNN's temporaries (the reordered inputs and output, the scratchpad) live in buffers kept from call
// to call, grown when a larger one is needed: malloc'd afresh, blocks of tens of MB are new mmaps whose
// pages fault in one by one on every call, which measured slower than the direct convolution.
struct Buffer {
    void* p = nullptr;
    size_t size = 0;
    void* get(size_t want) {
        if (want > size) {
            std::free(p);
            size = (want + 4095) / 4096 * 4096;
            if (posix_memalign(&p, 4096, size) != 0) { p = nullptr; size = 0; throw std::bad_alloc(); }
        }
        return p;
    }
};
// A primitive's three arguments, in order, and its scratchpad: one set in the process. Jittor compiles
// this header into one library per kernel signature (the passes, the kept weights' forward, a forward
// with a bias or residual), and a static here would be a set per library, each grown to the largest
// layer it ran (+50 MB in a TSIT 256x128 training process). A static local of an inline function is a
// unique symbol, which the dynamic linker binds once for every library that defines it. The kernels
// run one at a time (Jittor's executor), as they did on one library's set.
inline Buffer* shared_buffers() {
    static Buffer set[4];
    return set;
}

// A pass's primitive for one shape, made once: its descriptor (oneDNN walks its implementations to find
// it), the layouts it wants for its three arguments (in order), and the reorders from the user's plain
// NCHW / OIHW memory into them or, for the output, back. Made afresh on every call, these cost about
// 30-100 us: more than the convolution itself on the small maps of the decoders' first blocks.
struct Plan {
    primitive prim;
    memory::desc scratch, user[3], want[3];
    int arg[3];  // the primitive's name for each argument
    bool output[3];
    std::vector<reorder> move;  // per argument whose layouts differ, in order
};

static memory::desc plain(const memory::dims& d, tag t) { return memory::desc(d, dt::f32, t); }

static Plan make_plan(int mode, int wino, const Shapes& s, bool kept) {
    static const int args[3][3] = {{DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST},
                                   {DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC},
                                   {DNNL_ARG_SRC, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_WEIGHTS}};
    Plan p;
    for (int k = 0; k < 3; k++) {
        p.arg[k] = args[mode == 1 || mode == 2 ? mode : 0][k];
        p.output[k] = k == 2;
    }
    if (mode == 4 || (mode == 0 && !wino)) {  // the direct forward as Jittor's convolution asks for it
        auto pd = inference_pd(s, wino);
        p.prim = convolution_forward(pd);
        p.scratch = pd.scratchpad_desc();
        p.want[0] = pd.src_desc(); p.want[1] = pd.weights_desc(); p.want[2] = pd.dst_desc();
        p.user[0] = plain(s.src, tag::nchw); p.user[1] = kept ? pd.weights_desc() : plain(s.wei, tag::oihw);
        p.user[2] = plain(s.dst, tag::nchw);
    } else {
        algorithm alg;
        auto fpd = forward_pd(s, prop_kind::forward_training, wino, alg);
        const primitive_attr attr = user_scratchpad();
        if (mode == 0) {
            p.prim = convolution_forward(fpd);
            p.scratch = fpd.scratchpad_desc();
            p.want[0] = fpd.src_desc(); p.want[1] = fpd.weights_desc(); p.want[2] = fpd.dst_desc();
            p.user[0] = plain(s.src, tag::nchw); p.user[1] = plain(s.wei, tag::oihw); p.user[2] = plain(s.dst, tag::nchw);
        } else if (mode == 1) {
            auto d = convolution_backward_data::desc(alg, s.any(s.src), s.any(s.wei), s.any(s.dst), s.strides, s.dil, s.pad, s.pad);
            convolution_backward_data::primitive_desc pd(d, attr, cpu(), fpd);
            p.prim = convolution_backward_data(pd);
            p.scratch = pd.scratchpad_desc();
            p.want[0] = pd.diff_dst_desc(); p.want[1] = pd.weights_desc(); p.want[2] = pd.diff_src_desc();
            p.user[0] = plain(s.dst, tag::nchw); p.user[1] = plain(s.wei, tag::oihw); p.user[2] = plain(s.src, tag::nchw);
        } else {
            auto d = convolution_backward_weights::desc(alg, s.any(s.src), s.any(s.wei), s.any(s.dst), s.strides, s.dil, s.pad, s.pad);
            convolution_backward_weights::primitive_desc pd(d, attr, cpu(), fpd);
            p.prim = convolution_backward_weights(pd);
            p.scratch = pd.scratchpad_desc();
            p.want[0] = pd.src_desc(); p.want[1] = pd.diff_dst_desc(); p.want[2] = pd.diff_weights_desc();
            p.user[0] = plain(s.src, tag::nchw); p.user[1] = plain(s.dst, tag::nchw); p.user[2] = plain(s.wei, tag::oihw);
        }
    }
    for (int k = 0; k < 3; k++)
        if (p.want[k] != p.user[k])
            p.move.push_back(p.output[k] ? reorder(reorder::primitive_desc(cpu(), p.want[k], cpu(), p.user[k]))
                                         : reorder(reorder::primitive_desc(cpu(), p.user[k], cpu(), p.want[k])));
    return p;
}

static const Plan& plan(int mode, int wino, int n, int ic, int oc, int h, int w) {
    static std::map<std::array<int, 7>, Plan> plans;  // a few hundred shapes at most in a process
    const std::array<int, 7> key{{mode, wino, n, ic, oc, h, w}};  // no allocation per call
    auto found = plans.find(key);
    if (found == plans.end()) found = plans.emplace(key, make_plan(mode, wino, shapes(n, ic, oc, h, w), mode == 4)).first;
    return found->second;
}

// A forward's output plus a residual of its shape and a per-channel bias (each may be null): what a
// rendering would otherwise add in single-threaded passes over the NCHW output after this kernel. Rounded
// as (y + residual) + bias, the order Jittor's fused element-wise kernel of y + bias + residual gives on
// this project's networks (TSIT's ill-conditioned eval forward: 3.98e-3 off its archive, against 4.39e-3
// with (y + bias) + residual; docs/performance.md).
#pragma GCC push_options
#pragma GCC optimize("no-associative-math")
static void epilogue(float* out, const float* bias, const float* residual, int n, int c, long long hw) {
    if (!bias && !residual) return;
    #pragma omp parallel for schedule(static)
    for (long long plane = 0; plane < (long long)n * c; plane++) {
        float* o = out + plane * hw;
        const float* r = residual ? residual + plane * hw : nullptr;
        const float add = bias ? bias[plane % c] : 0.f;
        if (bias && r) for (long long i = 0; i < hw; i++) o[i] = (o[i] + r[i]) + add;
        else if (bias) for (long long i = 0; i < hw; i++) o[i] = o[i] + add;
        else for (long long i = 0; i < hw; i++) o[i] = o[i] + r[i];
    }
}
#pragma GCC pop_options

// Run a plan on the user's arrays a, b (inputs) and out: each input reordered into its kept buffer where
// the layouts differ, the output written there and copied back after.
static void execute(const Plan& p, const float* a, const float* b, float* out) {
    stream st(cpu());
    void* data[3] = {(void*)a, (void*)b, (void*)out};
    Buffer* buffers = shared_buffers();
    std::unordered_map<int, memory> bound{{DNNL_ARG_SCRATCHPAD, memory(p.scratch, cpu(), buffers[3].get(p.scratch.get_size() + 1))}};
    size_t moved = 0;
    const reorder* back = nullptr;
    memory back_from, back_to;
    for (int k = 0; k < 3; k++) {
        memory user(p.user[k], cpu(), data[k]);
        if (p.want[k] == p.user[k]) { bound[p.arg[k]] = user; continue; }
        memory m(p.want[k], cpu(), buffers[k].get(p.want[k].get_size()));
        if (p.output[k]) { back = &p.move[moved]; back_from = m; back_to = user; }
        else p.move[moved].execute(st, user, m);
        moved++;
        bound[p.arg[k]] = m;
    }
    p.prim.execute(st, bound);
    if (back) back->execute(st, back_from, back_to);
    st.wait();
}

// Inference (rendering) keeps each layer's weights in the layout its primitive reads, so that they are
// not reordered on every call (for a 1024x1024 layer on a 6x8 map the reorder costs more than the
// convolution): the forward_inference primitive, as Jittor's convolution asks for it.

// the size in floats of the kept weights of `inference_pd`
static long long kept_size(int wino, int n, int ic, int oc, int h, int w) {
    return (long long)(inference_pd(shapes(n, ic, oc, h, w), wino).weights_desc().get_size() / sizeof(float));
}

// mode 0: y = conv(x, w); 1: dx = conv_backward_data(dy, w); 2: dw = conv_backward_weights(x, dy), by
// Winograd when `wino` (and oneDNN has it), else direct (the forward then as Jittor's convolution asks for
// it: the same result); 3: out = the OIHW weights `b` in inference_pd's layout (kept while rendering);
// 4: y = conv(x = a, kept weights b). The forwards (0, 4) then add `bias` and `residual` where given
// (`epilogue`).
static void run(int mode, int wino, const float* a, const float* b, float* out, int n, int ic, int oc, int h, int w,
                const float* bias = nullptr, const float* residual = nullptr) {
    if (mode == 3) {
        Shapes s = shapes(n, ic, oc, h, w);
        stream st(cpu());
        memory from(plain(s.wei, tag::oihw), cpu(), (void*)b), to(inference_pd(s, wino).weights_desc(), cpu(), out);
        reorder(from, to).execute(st, from, to);
        st.wait();
        return;
    }
    execute(plan(mode, wino, n, ic, oc, h, w), a, b, out);
    if (mode == 0 || mode == 4) epilogue(out, bias, residual, n, oc, (long long)h * w);
}

// 1x1 convolutions (stride 1, no padding) as matrix products, one per image, by oneDNN's sgemm (row
// major): mode 0: y_n[oc, hw] = w[oc, ic] x_n[ic, hw]; 1: dx_n = w^T dy_n, `b` holding w^T [ic, oc];
// 2: dw = sum_n dy_n x_n^T, `a` = x, `b` = dy.
static void sgemm(char ta, char tb, long long m, long long n, long long k, const float* a, long long lda,
                  const float* b, long long ldb, float beta, float* c, long long ldc) {
    if (dnnl_sgemm(ta, tb, m, n, k, 1.f, a, lda, b, ldb, beta, c, ldc) != dnnl_success)
        throw std::runtime_error("pointwise convolution: oneDNN's sgemm failed");
}

static void pointwise_weight_grad(const float* x, const float* dy, float* out, int n, int ic, int oc, long long hw);

static void pointwise(int mode, const float* a, const float* b, float* out, int n, int ic, int oc, long long hw) {
    if (mode == 0) {
        for (int i = 0; i < n; i++) sgemm('N', 'N', oc, hw, ic, b, ic, a + i * ic * hw, hw, 0.f, out + i * oc * hw, hw);
    } else if (mode == 1) {
        for (int i = 0; i < n; i++) sgemm('N', 'N', ic, hw, oc, b, oc, a + i * oc * hw, hw, 0.f, out + i * ic * hw, hw);
    } else {
        pointwise_weight_grad(a, b, out, n, ic, oc, hw);
    }
}

// dw[o][i] = sum over images and pixels of dy[o][p] x[i][p]: sgemm runs this product (a long inner
// dimension, a small result) on one thread, so here the pixels are cut in tiles spread over the threads,
// each thread summing into its own dw, and these are added in thread order at the end (the same result
// on every run). A tile's product is sgemm's for wide layers; for narrow ones (where sgemm runs at a
// fifth of its rate) 4x4 blocks of dw summed in 16-float vectors. A wide layer with one tile (one image
// of at most `tile` pixels) is one sgemm call outside any parallel region: called inside a team of one
// thread, sgemm opened a nested team of its own, which with the idle workers of the previous kernel's
// team still spinning took 2-5 ms instead of 0.05-0.1 (docs/performance.md).
typedef float v16 __attribute__((vector_size(64)));

static inline v16 load16(const float* p) { v16 v; __builtin_memcpy(&v, p, sizeof v); return v; }

static void pointwise_weight_grad(const float* x, const float* dy, float* out, int n, int ic, int oc, long long hw) {
    const bool wide = (long long)oc * ic >= 64 * 64;
    const long long tile = wide ? 2048 : 256, tiles_per_image = (hw + tile - 1) / tile, tiles = n * tiles_per_image;
    if (wide && tiles == 1) {
        sgemm('N', 'T', oc, ic, hw, dy, hw, x, hw, 0.f, out, ic);
        return;
    }
    const int threads = (int)std::max(1LL, std::min<long long>(omp_get_max_threads(), tiles));
    std::vector<float> part((size_t)threads * oc * ic, 0.f);
    #pragma omp parallel num_threads(threads)
    {
        float* acc = part.data() + (size_t)omp_get_thread_num() * oc * ic;
        #pragma omp for schedule(static)
        for (long long t = 0; t < tiles; t++) {
            const long long image = t / tiles_per_image, from = (t % tiles_per_image) * tile;
            const long long len = std::min(hw - from, tile), vec = len / 16 * 16;
            const float* xs = x + image * ic * hw + from;
            const float* ds = dy + image * oc * hw + from;
            if (wide) {
                sgemm('N', 'T', oc, ic, len, ds, hw, xs, hw, 1.f, acc, ic);
                continue;
            }
            for (int o0 = 0; o0 < oc; o0 += 4)
                for (int i0 = 0; i0 < ic; i0 += 4) {
                    const int no = std::min(4, oc - o0), ni = std::min(4, ic - i0);
                    v16 s[4][4] = {};
                    for (long long p = 0; p < vec; p += 16) {
                        v16 d[4], xv[4];
                        for (int a = 0; a < no; a++) d[a] = load16(ds + (o0 + a) * hw + p);
                        for (int b = 0; b < ni; b++) xv[b] = load16(xs + (i0 + b) * hw + p);
                        for (int a = 0; a < no; a++)
                            for (int b = 0; b < ni; b++) s[a][b] += d[a] * xv[b];
                    }
                    for (int a = 0; a < no; a++)
                        for (int b = 0; b < ni; b++) {
                            float sum = 0.f;
                            for (int k = 0; k < 16; k++) sum += s[a][b][k];
                            for (long long p = vec; p < len; p++) sum += ds[(o0 + a) * hw + p] * xs[(i0 + b) * hw + p];
                            acc[(o0 + a) * ic + i0 + b] += sum;
                        }
                }
        }
    }
    for (long long j = 0; j < (long long)oc * ic; j++) {
        float sum = 0.f;
        for (int t = 0; t < threads; t++) sum += part[(size_t)t * oc * ic + j];
        out[j] = sum;
    }
}
}  // namespace wino
"""

# One kernel source for the three passes and the kept weights' two (so one compiled library and one set
# of buffers); which pass and the sizes come in `data`.
_SRC = 'wino::run((int)data["mode"], (int)data["wino"], in0_p, in1_p, out0_p, (int)data["n"], (int)data["ic"], ' \
       '(int)data["oc"], (int)data["h"], (int)data["w"]);'
_PREPARE_SRC = 'wino::run(3, (int)data["wino"], nullptr, in0_p, out0_p, (int)data["n"], (int)data["ic"], ' \
               '(int)data["oc"], (int)data["h"], (int)data["w"]);'
_KEPT_SIZE_SRC = 'out0_p[0] = wino::kept_size((int)data["wino"], (int)data["n"], (int)data["ic"], (int)data["oc"], ' \
                 '(int)data["h"], (int)data["w"]);'


def _data(mode, x_shape, oc, wino):
    n, ic, h, w = x_shape
    return {"mode": mode, "wino": wino, "n": n, "ic": ic, "oc": oc, "h": h, "w": w}


def _code(shape, dtype, inputs, src, data):
    out = jt.code(shape, dtype, inputs, cpu_header=_HEADER, cpu_src=src, data=data)
    out.compile_options = {f'FLAGS: -I"{_dnnl_include()}" ': 1}
    return out


def _op(mode, x_shape, oc, a, b, wino):
    n, ic, h, w = x_shape
    shape = {0: (n, oc, h, w), 1: (n, ic, h, w), 2: (oc, ic, 3, 3)}[mode]
    return _code(shape, "float32", [a, b], _SRC, _data(mode, x_shape, oc, wino))


class _Conv3x3(jt.Function):
    """`wino`: Winograd (1) or the direct algorithm (0) throughout; `narrow`: the forward and the input
    gradient by narrow_conv's kernel instead (the weight gradient as `wino` says); `varying`: how many
    leading images of the batch the input gradient is computed for (the rest are constants: it is 0
    there)."""

    def execute(self, x, weight, wino, narrow, varying):
        self.saved = (x, weight, wino, narrow, varying)
        if narrow:
            return narrow_conv.conv3x3(x, weight)
        return _op(0, x.shape, weight.shape[0], x, weight, wino)

    def grad(self, dy):
        x, weight, wino, narrow, varying = release_saved(self)
        dx = None if self.input_mask[0] == -2 else _input_grad(dy, x.shape, weight, wino, narrow, varying)
        dw = None if self.input_mask[1] == -2 else _op(2, x.shape, weight.shape[0], x, dy, wino)
        return dx, dw, None, None, None


def _input_grad(dy, x_shape, weight, wino, narrow, varying):
    """The input gradient of a 3x3 convolution for the first `varying` images (zeros for the rest)."""
    n = x_shape[0]
    head = dy if varying == n else dy[:varying]
    dx = narrow_conv.conv3x3(head.float32(), weight, transposed=True) if narrow else \
        _op(1, (varying,) + tuple(x_shape[1:]), weight.shape[0], head, weight, wino)
    if varying < n:
        dx = jt.concat([dx, jt.zeros((n - varying,) + tuple(x_shape[1:]), "float32")], 0)
    return dx


class _FrozenConv3x3(jt.Function):
    """A 3x3 convolution by a weight that never trains, from what `prepare` kept of it: the forward reads
    the kept weights; the backward gives the input gradient (of the first `varying` images) only."""

    def execute(self, x, weight, kept, varying):
        self.saved = (tuple(x.shape), weight, winograd_pays(x.shape, weight.shape[0]), varying)
        return _forward(4, x, kept.data, kept.out_channels, kept.wino, None, None)

    def grad(self, dy):
        x_shape, weight, wino, varying = release_saved(self)
        if self.input_mask[1] != -2:
            raise RuntimeError("a frozen convolution's weight has no gradient (winograd.Conv2d(frozen=True))")
        dx = None if self.input_mask[0] == -2 else _input_grad(dy, x_shape, weight, int(wino), False, varying)
        return dx, None, None, None


# Winograd pays where there are many 4x4 tiles per weight: on small maps the 4x larger transformed
# weights dominate, and with 3 input channels (VGG's first layer) it is no faster (docs/performance.md).
# One image's pixels decide, so that splitting a batch over MPI ranks does not change which algorithm
# (and rounding) a layer gets; except for wide layers, where the tiles of the whole batch pay: VGG19's
# 512-channel convolutions at 12x16 take half the time by Winograd in a batch of 4 (the same in a
# batch of 1), while narrower ones gain a millisecond or lose one. (SPADE's 1024-channel blocks at ngf 64
# on one image of 12x16 measured 38 -> 22 ms forward alone, but by Winograd an ngf-64 training process
# peaked 250 MB higher (the buffers kept for the transformed 1024x1024 weights): docs/performance.md.)
MIN_PIXELS = 512
MIN_IN_CHANNELS = 16
MIN_BATCH_PIXELS_WIDE = 384        # N x H x W, for a layer of at least WIDE weights
WIDE = 1 << 17                     # in x out channels: 256 x 512


def _fusable(y_shape, bias, residual):
    """Whether conv + bias + residual can run as one forward pass: nothing to differentiate (a rendering,
    under jt.no_grad) and float32 operands of the output's shape."""
    return bool(jt.flags.no_grad) and (bias is None or (bias.dtype == "float32" and tuple(bias.shape) == (y_shape[1],))) \
        and (residual is None or (residual.dtype == "float32" and tuple(residual.shape) == tuple(y_shape)))


def _add(y, bias, residual):
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y if residual is None else y + residual


def _forward(mode, x, b, oc, wino, bias, residual):
    """The forward `mode` (0: b the weight; 4: the kept weights), plus bias and residual in its epilogue."""
    n, _, h, w = x.shape
    inputs = [x, b] + [v for v in (bias, residual) if v is not None]
    return _code((n, oc, h, w), "float32", inputs, with_epilogue(_SRC, 2, bias is not None, residual is not None),
                 _data(mode, x.shape, oc, wino))


def winograd_pays(x_shape, out_channels):
    n, c, h, w = x_shape
    if c < MIN_IN_CHANNELS:
        return False
    return h * w >= MIN_PIXELS or (c * out_channels >= WIDE and n * h * w >= MIN_BATCH_PIXELS_WIDE)


def conv3x3(x, weight, bias=None, varying=None, residual=None):
    """`jt.nn.conv2d(x, weight, bias, 1, 1)` (+ `residual`, a tensor of the output's shape) for a
    [C_out, C_in, 3, 3] weight: on the CPU through this module's oneDNN passes, by Winograd where that is
    faster (`winograd_pays`), else by the direct algorithm Jittor's convolution uses (the same results to
    the bit, without its per-call buffers); with a few input or output channels (`narrow_conv.applies`),
    forward and input gradient by narrow_conv's kernel. Under jt.no_grad the bias and the residual are
    added in the convolution's own pass. `varying`: only the first `varying` images of x need an input
    gradient (the rest are constants, e.g. the real image beside the fake in the perceptual loss: vgg.py)."""
    if not enabled() or tuple(weight.shape[2:]) != (3, 3) or x.dtype != "float32" or weight.dtype != "float32":
        return _add(jt.nn.conv2d(x, weight, bias, 1, 1), None, residual)
    oc = weight.shape[0]
    wino, narrow = int(winograd_pays(x.shape, oc)), narrow_conv.applies(x.shape, oc)
    if _fusable((x.shape[0], oc) + tuple(x.shape[2:]), bias, residual):
        if narrow:
            return narrow_conv.conv3x3(x, weight, bias=bias, residual=residual)
        return _forward(0, x, weight, oc, wino, bias, residual)
    varying = x.shape[0] if varying is None else varying
    return _add(_Conv3x3.apply(x, weight, wino, narrow, varying), bias, residual)


_POINTWISE_SRC = 'wino::pointwise((int)data["mode"], in0_p, in1_p, out0_p, (int)data["n"], (int)data["ic"], ' \
                 '(int)data["oc"], (long long)data["h"] * (int)data["w"]);'


def _pointwise_op(mode, x_shape, oc, a, b):
    n, ic, h, w = x_shape
    shape = {0: (n, oc, h, w), 1: (n, ic, h, w), 2: (oc, ic, 1, 1)}[mode]
    return _code(shape, "float32", [a, b], _POINTWISE_SRC, _data(mode, x_shape, oc, 0))


class _Pointwise(jt.Function):
    def execute(self, x, weight):
        self.saved = (x, weight)
        return _pointwise_op(0, x.shape, weight.shape[0], x, weight)

    def grad(self, dy):
        x, weight = release_saved(self)
        oc = weight.shape[0]
        dx = None if self.input_mask[0] == -2 else _pointwise_op(1, x.shape, oc, dy, weight.reshape(oc, -1).t())
        dw = None if self.input_mask[1] == -2 else _pointwise_op(2, x.shape, oc, x, dy)
        return dx, dw


def pointwise(x, weight, bias=None):
    """`jt.nn.conv2d(x, weight, bias)` for a [C_out, C_in, 1, 1] weight (stride 1, no padding): on the CPU
    one oneDNN matrix product per image, forward and backward (the module docstring says why). The
    products sum as the convolution does: the same forward result."""
    if not enabled() or x.dtype != "float32" or weight.dtype != "float32":
        return jt.nn.conv2d(x, weight, bias)
    return _add(_Pointwise.apply(x, weight), bias, None)


class KeptWeights:
    """A 3x3 convolution's weight in the layout oneDNN's inference primitive reads for inputs of
    `x_shape` (`prepare`): for the direct algorithm (`wino` 0) or Winograd's transformed weights (1),
    kept while rendering so that it is not reordered or transformed on every forward."""

    def __init__(self, data, x_shape, out_channels, wino):
        self.data, self.x_shape, self.out_channels, self.wino = data, tuple(x_shape), out_channels, wino

    def sync(self):
        self.data.sync()


def _one(v):
    return v if isinstance(v, int) else (v[0] if len(set(v)) == 1 else None)


def _is_3x3_same(weight_shape, stride, padding, dilation, groups):
    return (_one(stride), _one(padding), _one(dilation), groups) == (1, 1, 1, 1) and tuple(weight_shape[2:]) == (3, 3)


def _is_1x1(weight_shape, stride, padding, dilation, groups):
    return (_one(stride), _one(padding), _one(dilation), groups) == (1, 0, 1, 1) and tuple(weight_shape[2:]) == (1, 1)


# While rendering, wide layers on maps from 4x8 to 64x64 pixels convolve by Winograd with their
# transformed weights kept: oneDNN's inference primitive then reads them as they are, where the training
# primitive transforms them on every call (which on small maps costs more than the convolution, so these
# layers ran by the direct algorithm). There it beats both of the other ways; narrower layers and
# larger maps gain nothing (docs/performance.md). The kept weights are 1.8-4x the size of the weight; a
# layer whose would pass KEPT_WINOGRAD_MAX_BYTES (SPADE's 1024-channel layers at ngf 64) keeps the
# direct algorithm's layout instead.
KEPT_WINOGRAD_MIN_WEIGHTS = 64 * 128   # in x out channels
KEPT_WINOGRAD_MIN_PIXELS = 32          # H x W of one image
KEPT_WINOGRAD_MAX_PIXELS = 4096
KEPT_WINOGRAD_MAX_BYTES = 32 << 20
# A frozen layer (`prepare(frozen=True)`) keeps its transformed weights in training only where its batch
# has few tiles: on more pixels the transform per call is a small part of the forward (VGG's conv4 on a
# pair of 384x512 images: 5%, about 10 ms of a 1.9 s TSIT step for 113 MB), on fewer it is a fifth.
FROZEN_KEPT_MAX_BATCH_PIXELS = 2048    # N x H x W


def _kept(weight, x_shape, wino, max_bytes=None):
    oc = weight.shape[0]
    data = _data(3, x_shape, oc, wino)
    size = int(_code((1,), "int64", [weight], _KEPT_SIZE_SRC, data).item())
    if wino and max_bytes is not None and 4 * size > max_bytes:
        return None
    return KeptWeights(_code((size,), "float32", [weight], _PREPARE_SRC, data), x_shape, oc, wino)


def prepare(weight, x_shape, stride=1, padding=0, dilation=1, groups=1, frozen=False):
    """What a rendering keeps of `weight` for inputs of `x_shape` (`kept_weights`): on the CPU, a 3x3
    convolution gets its KeptWeights: Winograd's transformed weights where that pays (a wide layer on a
    map that is neither tiny nor large, see above), else the direct algorithm's where Winograd does not
    pay (`winograd_pays`: a small map, where a reorder of the weights per call costs up to as much as the
    convolution). Any other convolution keeps the weight itself. `frozen`: a weight that never trains
    (VGG19's), kept in training too where its batch has few pixels (FROZEN_KEPT_MAX_BATCH_PIXELS), and
    transformed whatever the size of its transformed weights (a training forward would transform them on
    every call)."""
    if not ((frozen or kept_weights.keeping()) and enabled() and weight.dtype == "float32"
            and _is_3x3_same(weight.shape, stride, padding, dilation, groups)):
        return weight
    n, ic, h, w = x_shape
    oc = weight.shape[0]
    if narrow_conv.applies(x_shape, oc) or (frozen and n * h * w > FROZEN_KEPT_MAX_BATCH_PIXELS):
        return weight  # the former reads the weight as it is; the latter is above
    if ic * oc >= KEPT_WINOGRAD_MIN_WEIGHTS and KEPT_WINOGRAD_MIN_PIXELS <= h * w <= KEPT_WINOGRAD_MAX_PIXELS:
        kept = _kept(weight, x_shape, wino=1, max_bytes=None if frozen else KEPT_WINOGRAD_MAX_BYTES)
        if kept is not None:
            return kept
    return weight if winograd_pays(x_shape, oc) else _kept(weight, x_shape, wino=0)


def _conv_kept(x, kept, bias, residual):
    assert tuple(x.shape) == kept.x_shape and x.dtype == "float32", (x.shape, x.dtype, kept.x_shape)
    y_shape = (x.shape[0], kept.out_channels) + tuple(x.shape[2:])
    if _fusable(y_shape, bias, residual):
        return _forward(4, x, kept.data, kept.out_channels, kept.wino, bias, residual)
    return _add(_forward(4, x, kept.data, kept.out_channels, kept.wino, None, None), bias, residual)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, residual=None):
    """`jt.nn.conv2d` with the same arguments, + `residual` (a tensor of the output's shape) where given;
    3x3, stride 1, padding 1 ones by Winograd (`conv3x3`). `weight` may be what `prepare` kept of it (a
    rendering, under jt.no_grad)."""
    if isinstance(weight, KeptWeights):
        return _conv_kept(x, weight, bias, residual)
    if _is_3x3_same(weight.shape, stride, padding, dilation, groups):
        return conv3x3(x, weight, bias, residual=residual)
    if _is_1x1(weight.shape, stride, padding, dilation, groups):
        return _add(pointwise(x, weight, bias), None, residual)
    return _add(jt.nn.conv2d(x, weight, bias, stride, padding, dilation, groups), None, residual)


class Conv2d(nn.Conv2d):
    """`jittor.nn.Conv2d` (same parameters and state names) whose 3x3, stride-1, padding-1 case runs by
    Winograd (`conv2d` above); any other shape is Jittor's own convolution. `frozen`: its weight never
    trains (VGG19's), so what `prepare` keeps of it is kept in training as well: a training forward then
    reads Winograd's transformed weights instead of transforming the weight on every call (the backward
    gives the input gradient only)."""

    def __init__(self, *args, frozen=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen = frozen

    def weight_for(self, x=None):
        """The weight to convolve `x` with: while rendering (or for a frozen layer), what `prepare` keeps of
        it (for x None, the weight itself)."""
        return self.weight if x is None else self.weight_for_shape(tuple(x.shape))

    def weight_for_shape(self, x_shape):
        """weight_for an input of `x_shape`."""
        return kept_weights.kept(self, (self.weight,), lambda: prepare(
            self.weight, x_shape, self.stride, self.padding, self.dilation, self.groups, self.frozen), x_shape,
            always=self.frozen)

    def execute(self, x, residual=None, varying=None):
        """The convolution of x, + `residual` where given (in one pass when rendering). `varying`: only the
        first `varying` images of x need an input gradient (`conv3x3`)."""
        weight = self.weight_for(x)
        if isinstance(weight, KeptWeights) and not jt.flags.no_grad:  # a frozen layer's training forward
            varying = x.shape[0] if varying is None else varying
            return _add(_FrozenConv3x3.apply(x, self.weight, weight, varying), self.bias, residual)
        if varying is not None and weight is self.weight and _is_3x3_same(
                weight.shape, self.stride, self.padding, self.dilation, self.groups):
            return conv3x3(x, weight, self.bias, varying=varying, residual=residual)
        return conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups, residual)

