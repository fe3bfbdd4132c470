// Times one 3x3 convolution layer in oneDNN (v3 API) as float32 direct, float32 Winograd and
// bfloat16 direct (bf16 src/weights/dst, f32 accumulation, f32 weight gradient), forward,
// backward-data and backward-weights, and prints which implementation oneDNN picked.
// A separate program because Jittor links its own oneDNN 2.2, whose symbols clash with a
// current one. Build and run with benchmarks/bf16_conv.sh; see docs/bf16.md.
//
// Usage: bf16_conv [--reps R] [--warmup W] [N,Cin,Cout,H,W[,name]] ...
// Without layer arguments it runs the SPADE layer list below.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"

using namespace dnnl;
using dims = memory::dims;
using dt = memory::data_type;
using tag = memory::format_tag;

struct Layer {
    memory::dim n, c_in, c_out, h, w;
    std::string name;
};

static const std::vector<Layer> kSpadeLayers = {
    {4, 256, 256, 12, 16, "ngf16 b4 head"},
    {4, 128, 64, 48, 64, "ngf16 b4 up"},
    {4, 32, 32, 96, 128, "ngf16 b4 last"},
    {4, 128, 32, 96, 128, "ngf16 b4 gamma|beta"},
    {4, 128, 64, 96, 128, "ngf16 b4 gamma+beta"},
    {1, 1024, 1024, 12, 16, "ngf64 b1 head"},
    {1, 512, 256, 48, 64, "ngf64 b1 up"},
    {1, 128, 128, 192, 256, "ngf64 b1 last"},
    {1, 128, 256, 192, 256, "ngf64 b1 gamma+beta"},
    {1, 128, 128, 96, 128, "ngf64 b1 96x128"},
};

static double now_ms() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

// Best (minimum) wall time of `reps` calls after `warmup` untimed calls.
static double best_ms(const std::function<void()> &fn, int warmup, int reps) {
    for (int i = 0; i < warmup; ++i) fn();
    double best = 1e30;
    for (int i = 0; i < reps; ++i) {
        double t0 = now_ms();
        fn();
        best = std::min(best, now_ms() - t0);
    }
    return best;
}

struct Bench {
    engine eng;
    stream strm;
    int warmup, reps;
    std::mt19937 rng{1234};

    // A plain f32 (nchw / oihw / x) tensor filled with values in [-1, 1].
    memory user_f32(const dims &d, tag t) {
        memory m({d, dt::f32, t}, eng);
        float *p = static_cast<float *>(m.get_data_handle());
        std::uniform_real_distribution<float> u(-1.f, 1.f);
        size_t count = m.get_desc().get_size() / sizeof(float);
        for (size_t i = 0; i < count; ++i) p[i] = u(rng);
        return m;
    }

    // Memory in the layout/type the primitive chose, filled from `user`.
    memory to_impl(memory user, const memory::desc &md) {
        memory m(md, eng);
        reorder(user, m).execute(strm, user, m);
        strm.wait();
        return m;
    }

    // Time of one reorder between a plain f32 tensor and the primitive's layout/type.
    double reorder_ms(const memory::desc &plain, const memory::desc &impl, bool into_impl) {
        if (plain == impl) return 0.0;
        memory a(plain, eng), b(impl, eng);
        std::memset(a.get_data_handle(), 0, plain.get_size());
        std::memset(b.get_data_handle(), 0, impl.get_size());
        memory &from = into_impl ? a : b, &to = into_impl ? b : a;
        reorder r(from, to);
        return best_ms([&] { r.execute(strm, from, to); strm.wait(); }, warmup, reps);
    }
};

struct PassResult {
    bool available = false;
    std::string why;   // when not available
    double ms = 0, reorder_ms = 0;
    std::string impl;
};

struct ConfigResult {
    std::string label;
    PassResult fwd, bwd_data, bwd_weights;
};

// One layer, one configuration. `act` is the type of src/dst/diff_src/diff_dst and of weights;
// bias, diff_bias and diff_weights stay f32.
// Time one pass: its primitive `Prim` from `pd` on `args` (plus a scratchpad where it needs one).
template <class Prim, class PD>
static void time_pass(Bench &b, PassResult &out, const PD &pd, std::unordered_map<int, memory> args) {
    if (pd.scratchpad_desc().get_size())
        args[DNNL_ARG_SCRATCHPAD] = memory(pd.scratchpad_desc(), b.eng);
    Prim prim(pd);
    out.available = true;
    out.impl = pd.impl_info_str();
    out.ms = best_ms([&] { prim.execute(b.strm, args); b.strm.wait(); }, b.warmup, b.reps);
}

static ConfigResult run_config(Bench &b, const Layer &l, algorithm alg, dt act,
                               const std::string &label) {
    ConfigResult r;
    r.label = label;
    const dims src_d = {l.n, l.c_in, l.h, l.w}, wei_d = {l.c_out, l.c_in, 3, 3},
               bias_d = {l.c_out}, dst_d = {l.n, l.c_out, l.h, l.w};
    const dims strides = {1, 1}, pad = {1, 1};
    const memory::desc src_any(src_d, act, tag::any), wei_any(wei_d, act, tag::any),
            dst_any(dst_d, act, tag::any), bias_md(bias_d, dt::f32, tag::x),
            diff_wei_any(wei_d, dt::f32, tag::any);
    const memory::desc src_plain(src_d, dt::f32, tag::nchw), wei_plain(wei_d, dt::f32, tag::oihw),
            dst_plain(dst_d, dt::f32, tag::nchw);

    convolution_forward::primitive_desc fwd_pd;
    try {
        fwd_pd = convolution_forward::primitive_desc(b.eng, prop_kind::forward_training, alg,
                src_any, wei_any, bias_md, dst_any, strides, pad, pad);
    } catch (const error &e) {
        r.fwd.why = r.bwd_data.why = r.bwd_weights.why = "not available";
        return r;
    }

    memory src_u = b.user_f32(src_d, tag::nchw), wei_u = b.user_f32(wei_d, tag::oihw),
           bias_u = b.user_f32(bias_d, tag::x), ddst_u = b.user_f32(dst_d, tag::nchw);

    // Forward.
    {
        memory src = b.to_impl(src_u, fwd_pd.src_desc()), wei = b.to_impl(wei_u, fwd_pd.weights_desc()),
               dst(fwd_pd.dst_desc(), b.eng);
        time_pass<convolution_forward>(b, r.fwd, fwd_pd, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei},
                {DNNL_ARG_BIAS, bias_u}, {DNNL_ARG_DST, dst}});
        r.fwd.reorder_ms = b.reorder_ms(src_plain, fwd_pd.src_desc(), true)
                + b.reorder_ms(wei_plain, fwd_pd.weights_desc(), true)
                + b.reorder_ms(dst_plain, fwd_pd.dst_desc(), false);
    }

    // Backward data.
    try {
        convolution_backward_data::primitive_desc pd(b.eng, alg, src_any, wei_any, dst_any,
                strides, pad, pad, fwd_pd);
        memory ddst = b.to_impl(ddst_u, pd.diff_dst_desc()), wei = b.to_impl(wei_u, pd.weights_desc()),
               dsrc(pd.diff_src_desc(), b.eng);
        time_pass<convolution_backward_data>(b, r.bwd_data, pd, {{DNNL_ARG_DIFF_DST, ddst},
                {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, dsrc}});
        r.bwd_data.reorder_ms = b.reorder_ms(dst_plain, pd.diff_dst_desc(), true)
                + b.reorder_ms(wei_plain, pd.weights_desc(), true)
                + b.reorder_ms(src_plain, pd.diff_src_desc(), false);
    } catch (const error &e) {
        r.bwd_data.why = "not available";
    }

    // Backward weights.
    try {
        convolution_backward_weights::primitive_desc pd(b.eng, alg, src_any, diff_wei_any,
                bias_md, dst_any, strides, pad, pad, fwd_pd);
        memory src = b.to_impl(src_u, pd.src_desc()), ddst = b.to_impl(ddst_u, pd.diff_dst_desc()),
               dwei(pd.diff_weights_desc(), b.eng), dbias(pd.diff_bias_desc(), b.eng);
        time_pass<convolution_backward_weights>(b, r.bwd_weights, pd, {{DNNL_ARG_SRC, src},
                {DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_DIFF_WEIGHTS, dwei}, {DNNL_ARG_DIFF_BIAS, dbias}});
        r.bwd_weights.reorder_ms = b.reorder_ms(src_plain, pd.src_desc(), true)
                + b.reorder_ms(dst_plain, pd.diff_dst_desc(), true)
                + b.reorder_ms(wei_plain, pd.diff_weights_desc(), false);
    } catch (const error &e) {
        r.bwd_weights.why = "not available";
    }
    return r;
}

static const char *isa_name(cpu_isa isa) {
    switch (isa) {
        case cpu_isa::avx512_core: return "avx512_core";
        case cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
        case cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
        case cpu_isa::avx512_core_amx: return "avx512_core_amx";
        case cpu_isa::avx2: return "avx2";
        case cpu_isa::avx2_vnni: return "avx2_vnni";
        default: return "other";
    }
}

static bool parse_layer(const char *s, Layer &l) {
    long v[5];
    int used = 0;
    if (std::sscanf(s, "%ld,%ld,%ld,%ld,%ld%n", &v[0], &v[1], &v[2], &v[3], &v[4], &used) != 5)
        return false;
    l = {v[0], v[1], v[2], v[3], v[4], s[used] == ',' ? std::string(s + used + 1) : std::string()};
    if (l.name.empty()) l.name = s;
    return true;
}

int main(int argc, char **argv) {
    int warmup = 1, reps = 3;
    std::vector<Layer> layers;
    for (int i = 1; i < argc; ++i) {
        Layer l;
        if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = std::atoi(argv[++i]);
        else if (parse_layer(argv[i], l)) layers.push_back(l);
        else {
            std::fprintf(stderr, "bf16_conv: cannot read argument '%s' (want --reps R, --warmup W "
                                 "or N,Cin,Cout,H,W[,name])\n", argv[i]);
            return 2;
        }
    }
    if (layers.empty()) layers = kSpadeLayers;
    if (reps < 1) reps = 1;

    engine eng;
    try {
        eng = engine(engine::kind::cpu, 0);
    } catch (const error &e) {
        std::fprintf(stderr, "bf16_conv: oneDNN could not create a CPU engine: %s\n", e.what());
        return 1;
    }
    Bench b{eng, stream(eng), warmup, reps};
    const version_t *v = version();
    std::printf("oneDNN %d.%d.%d (%s), effective ISA %s, best of %d after %d warm-up\n", v->major,
            v->minor, v->patch, v->hash, isa_name(get_effective_cpu_isa()), reps, warmup);
    std::printf("times in ms per pass; 'reord' = reorders between plain f32 nchw/oihw and the "
                "primitive's layout (not in 'ms')\n\n");

    std::vector<std::string> impls;
    auto impl_id = [&](const PassResult &p) -> std::string {
        if (!p.available) return "-";
        auto it = std::find(impls.begin(), impls.end(), p.impl);
        if (it == impls.end()) { impls.push_back(p.impl); it = impls.end() - 1; }
        return "i" + std::to_string(it - impls.begin());
    };
    std::printf("%-20s %-22s %-16s %9s %8s %6s  %s\n", "layer", "shape N,Ci,Co,H,W", "config",
            "ms", "reord", "x f32", "impl fwd/bwd_d/bwd_w");
    for (const Layer &l : layers) {
        char shape[64];
        std::snprintf(shape, sizeof shape, "%ld,%ld,%ld,%ld,%ld", (long)l.n, (long)l.c_in,
                (long)l.c_out, (long)l.h, (long)l.w);
        ConfigResult f32 = run_config(b, l, algorithm::convolution_direct, dt::f32, "f32 direct");
        ConfigResult wino = run_config(b, l, algorithm::convolution_winograd, dt::f32, "f32 wino");
        ConfigResult bf16 = run_config(b, l, algorithm::convolution_direct, dt::bf16, "bf16 direct");
        for (const ConfigResult *c : {&f32, &wino, &bf16}) {
            const PassResult *passes[3] = {&c->fwd, &c->bwd_data, &c->bwd_weights};
            const PassResult *base[3] = {&f32.fwd, &f32.bwd_data, &f32.bwd_weights};
            const char *pass_names[3] = {"fwd", "bwd_d", "bwd_w"};
            double total = 0, total_base = 0, total_reorder = 0;
            bool all = true;
            std::string ids;
            for (int p = 0; p < 3; ++p) {
                all = all && passes[p]->available && base[p]->available;
                total += passes[p]->ms;
                total_base += base[p]->ms;
                total_reorder += passes[p]->reorder_ms;
                ids += (p ? "/" : "") + impl_id(*passes[p]);
            }
            for (int p = 0; p < 3; ++p) {
                std::string config = c->label + " " + pass_names[p];
                if (!passes[p]->available) {
                    std::printf("%-20s %-22s %-16s %s\n", l.name.c_str(), shape, config.c_str(),
                            passes[p]->why.c_str());
                    continue;
                }
                std::printf("%-20s %-22s %-16s %9.2f %8.2f %6.2f  %s\n", l.name.c_str(), shape,
                        config.c_str(), passes[p]->ms, passes[p]->reorder_ms,
                        base[p]->available ? passes[p]->ms / base[p]->ms : 0.0,
                        impl_id(*passes[p]).c_str());
            }
            if (all)
                std::printf("%-20s %-22s %-16s %9.2f %8.2f %6.2f  %s\n", l.name.c_str(), shape,
                        (c->label + " sum").c_str(), total, total_reorder, total / total_base,
                        ids.c_str());
        }
        std::printf("\n");
        std::fflush(stdout);
    }
    std::printf("implementations:\n");
    for (size_t i = 0; i < impls.size(); ++i) std::printf("  i%zu = %s\n", i, impls[i].c_str());
    return 0;
}
