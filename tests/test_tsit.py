"""TSIT (Jiang et al. 2020) in jspade: shapes at the sizes it supports and clear refusals of the ones
it does not, strict import of the original's checkpoint, the optional style stream, a training step
and resume, infer.py with a style folder, and parity with the original code (a real bug still fails)."""
import collections
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jspade.checkpoint import CheckpointError, import_pytorch_checkpoint, load_state_strict, state_arrays
from jspade.config import Config, DataConfig, ModelConfig, Phase, TrainConfig
from jspade.models import winograd
from jspade.models.normalization import FADE, InstanceNorm2d, SyncBatchNorm
from jspade.models.spade_model import SPADEModel, check_output_size
from jspade.models.tsit import TSITGenerator, downsample_half, fadain
from jspade.runtime import jt

from tiny_models import straight_and_resumed_runs


def tsit_opt(**kw):
    base = dict(netG="tsit", label_nc=4, ngf=2, ndf=4, z_dim=8, crop_size=256, aspect_ratio=2.0,
                num_upsampling_layers="more", norm_G="spectralfadesyncbatch3x3", norm_S="spectralinstance",
                use_vae=True)
    base.update(kw)
    return ModelConfig(**base)


def semantics(opt, b, h, w, seed=0):
    label = np.random.default_rng(seed).integers(0, opt.label_nc, (b, h, w))
    sem = np.zeros((b, opt.semantic_nc, h, w), np.float32)
    sem[np.arange(b)[:, None, None], label, np.arange(h)[None, :, None], np.arange(w)[None, None, :]] = 1
    return jt.array(sem)


def photo(b, h, w, seed):
    return jt.array(np.random.default_rng(seed).uniform(-1, 1, (b, 3, h, w)).astype(np.float32))


# ---- architecture ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,out_hw", [
    (dict(crop_size=512, aspect_ratio=4 / 3), (384, 512)),
    (dict(crop_size=256, aspect_ratio=2.0, use_vae=False, norm_S="spectralbatch",
          norm_G="spectralfadeinstance3x3"), (128, 256)),
])
def test_tsit_output_shapes_and_original_names(kw, out_hw):
    opt = tsit_opt(**kw)
    g = TSITGenerator(opt).init_weights()
    g.train()
    z = jt.randn(1, opt.z_dim) if opt.use_vae else None
    out = g(semantics(opt, 1, *out_hw), z=z).numpy()
    assert out.shape == (1, 3, *out_hw)
    assert np.isfinite(out).all() and np.abs(out).max() <= 1
    state = state_arrays(g)  # the original's names
    nf = opt.ngf
    assert (g.sh, g.sw) == (out_hw[0] // 128, out_hw[1] // 128)  # one more upsampling than SPADE's 'more'
    # the content stream: 8 blocks, fmiddle = fin, learned shortcuts where the width changes
    assert tuple(state["content_stream.res_0.conv_0.weight_orig"].shape) == (opt.semantic_nc, opt.semantic_nc, 3, 3)
    assert tuple(state["content_stream.res_4.conv_s.weight_orig"].shape) == (16 * nf, 8 * nf, 1, 1)
    assert "content_stream.res_5.conv_s.weight_orig" not in state
    assert not any(k.startswith("style_stream.") for k in state)
    # FADE: gamma/beta are single convolutions of the stream feature (no mlp_shared); fmiddle = fin
    assert tuple(state["up_0.norm_1.mlp_gamma.weight"].shape) == (16 * nf, 16 * nf, 3, 3)
    assert tuple(state["up_0.conv_1.weight_orig"].shape) == (8 * nf, 16 * nf, 3, 3)
    assert not any("mlp_shared" in k for k in state)
    stream_norm = g.content_stream.res_0.norm_layer_in
    assert isinstance(stream_norm, SyncBatchNorm if "batch" in opt.norm_S else InstanceNorm2d)
    if opt.use_vae:
        assert tuple(state["fc.weight"].shape) == (16 * nf * g.sh * g.sw, opt.z_dim)


@pytest.mark.parametrize("crop,aspect,mode,needle", [
    (256, 4 / 3, "more", "256x192"),
    (192, 1.0, "more", "multiples of 128"),
    (512, 4 / 3, "most", "'most'"),
])
def test_tsit_refuses_sizes_and_modes_it_cannot_make(crop, aspect, mode, needle):
    with pytest.raises(ValueError, match=needle) as err:
        check_output_size(crop, aspect, mode, netG="tsit")
    msg = str(err.value)
    assert "\n" not in msg and ("512x384" in msg or "'more'" in msg)  # says why and what works
    with pytest.raises(ValueError, match=needle):
        TSITGenerator(tsit_opt(crop_size=crop, aspect_ratio=aspect, num_upsampling_layers=mode))
    # the same sizes are fine for SPADE where its own rule allows them
    if mode == "more" and crop == 256:
        check_output_size(crop, aspect, mode)


def test_tsit_accepts_the_projects_spade_defaults():
    """Switching netG alone works: a SPADE norm name selects the same FADE norm, and 'normal' gives the
    original's 'more' (the original overrides the option)."""
    g = TSITGenerator(tsit_opt(norm_G="spectralspadesyncbatch3x3", num_upsampling_layers="normal"))
    assert isinstance(g.head_0.norm_0, FADE) and isinstance(g.head_0.norm_0.param_free_norm, SyncBatchNorm)
    with pytest.raises(ValueError, match="FADE"):
        TSITGenerator(tsit_opt(norm_G="spectralfadegroup3x3"))
    with pytest.raises(ValueError, match="norm_S"):
        TSITGenerator(tsit_opt(norm_S="spectralgroup"))
    with pytest.raises(ValueError, match="netG"):
        SPADEModel(ModelConfig(netG="pix2pixhd"))


@pytest.mark.parametrize("kw", [dict(), dict(label_nc=3, contain_dontcare_label=True, no_instance=False)])
def test_content_stream_reads_label_ids_as_the_dense_convolutions_would(kw):
    """The stream's first block convolves the one-hot map from its label ids (conv_0 and the shortcut);
    with instance edges (an extra channel) that channel is convolved densely. Features and the
    gradients of the block's weights equal the dense convolutions' up to float32 rounding (which the
    instance norms of a 2-channel stream amplify to ~7e-5; a wrong tap or a dropped channel is O(1))."""
    from jspade.models.normalization import SegmentationMap
    opt = tsit_opt(crop_size=128, aspect_ratio=1.0, **kw)
    jt.set_global_seed(5)
    stream = TSITGenerator(opt).init_weights().content_stream
    stream.train()
    sem = semantics(opt, 2, 128, 128, seed=3)
    if not opt.no_instance:  # instance edges in the last channel
        edges = np.random.default_rng(4).uniform(0, 1, (2, 1, 128, 128)) > 0.8
        sem = jt.array(np.concatenate([sem.numpy()[:, :-1], edges.astype(np.float32)], 1))
    block = stream.res_0
    # (not conv_0's bias: instance norm follows, so its gradient is zero up to rounding noise)
    weights = [block.conv_0.weight_orig, block.conv_s.weight_orig]
    uv = [(m.weight_u.numpy(), m.weight_v.numpy()) for m in (block.conv_0, block.conv_1, block.conv_s)]
    # the first four features (deeper ones, 4x4 maps and smaller, amplify rounding); the gradients
    # through the first two only (back through the deeper norms a near-constant channel made
    # rounding 1e-3 of the gradient for one random init in twelve)
    probe = [jt.array(np.random.default_rng(i).standard_normal(f.shape).astype(np.float32))
             for i, f in enumerate(stream(sem)[:4])]

    def run(inp):
        for m, (u, v) in zip((block.conv_0, block.conv_1, block.conv_s), uv):  # the same power iteration
            m.weight_u.update(jt.array(u))
            m.weight_v.update(jt.array(v))
        features = stream(inp)[:4]
        loss = sum((f * q).sum() for f, q in zip(features[:2], probe))
        return [f.numpy() for f in features], [g.numpy() for g in jt.grad(loss, weights)]

    dense, by_ids = run(sem), run(SegmentationMap(sem, opt.num_label_ids))
    for i, (a, b) in enumerate(zip(dense[0] + dense[1], by_ids[0] + by_ids[1])):
        assert np.abs(a - b).max() <= 2e-4 * max(np.abs(a).max(), 1.0), i
    stream.eval()
    with jt.no_grad():
        a, b = stream(sem)[3].numpy(), stream(SegmentationMap(sem, opt.num_label_ids))[3].numpy()
    assert np.abs(a - b).max() <= 2e-4 * max(np.abs(a).max(), 1.0)


def test_downsample_takes_every_other_pixel_like_pytorch():
    """F.interpolate(scale_factor=0.5) picks source index 2*i, also for odd sizes (in/out would not)."""
    x = np.arange(2 * 7 * 9, dtype=np.float32).reshape(1, 2, 7, 9)
    np.testing.assert_array_equal(downsample_half(jt.array(x)).numpy(), x[:, :, 0:6:2, 0:8:2])


def test_fadain_matches_adain_and_blends_by_alpha():
    rng = np.random.default_rng(3)
    c = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    s = (rng.normal(size=(2, 3, 2, 3)) * 3 + 1).astype(np.float32)

    def stats(a):
        flat = a.reshape(2, 3, -1).astype(np.float64)
        return flat.mean(-1)[..., None, None], np.sqrt(flat.var(-1, ddof=1) + 1e-5)[..., None, None]

    (cm, cs), (sm, ss) = stats(c), stats(s)
    want = (c - cm) / cs * ss + sm
    for alpha in (0.0, 0.3, 1.0):
        got = fadain(jt.array(c), jt.array(s), alpha).numpy()
        np.testing.assert_allclose(got, alpha * want + (1 - alpha) * c, atol=1e-5)


# ---- the style stream (this project's option) --------------------------------------------------------

def test_style_stream_changes_the_output_only_with_alpha_above_zero():
    outs = {}
    for alpha in (0.0, 0.7):
        jt.set_global_seed(5)
        g = TSITGenerator(tsit_opt(style_stream=True, alpha=alpha, norm_G="spectralfadeinstance3x3")) \
            .init_weights("xavier", 1.0)
        g.eval()
        sem, z = semantics(g.opt, 1, 128, 256, seed=1), jt.array(np.ones((1, 8), np.float32))
        with jt.no_grad():
            outs[alpha] = [g(sem, z=z, style=photo(1, 128, 256, seed)).numpy() for seed in (10, 11)]
            outs[alpha].append(g(sem, z=z).numpy())  # no photo: unstyled
        assert "style_stream.res_0.conv_0.weight_orig" in g.state_dict()
        assert tuple(g.state_dict()["style_stream.res_0.conv_0.weight_orig"].shape) == (3, 3, 3, 3)
    a0, a7 = outs[0.0], outs[0.7]
    np.testing.assert_allclose(a0[0], a0[1], atol=1e-6)  # alpha 0: the photo has no effect
    np.testing.assert_allclose(a0[0], a0[2], atol=1e-6)
    assert np.abs(a7[0] - a7[1]).max() > 1e-2  # alpha > 0: two photos, two results
    assert np.abs(a7[0] - a0[0]).max() > 1e-2
    with pytest.raises(ValueError, match="alpha"):
        TSITGenerator(tsit_opt(style_stream=True, alpha=1.5))


def test_original_option_names_map_to_the_config():
    cfg = ModelConfig.from_dict({"netG": "tsit", "no_ss": True, "task": "SIS", "norm_S": "spectralbatch"})
    assert cfg.netG == "tsit" and not cfg.style_stream and cfg.norm_S == "spectralbatch"
    assert ModelConfig.from_dict({"no_ss": False}).style_stream
    with pytest.raises(ValueError, match="SIS"):
        ModelConfig.from_dict({"netG": "tsit", "task": "AST"})


# ---- the original's checkpoint -------------------------------------------------------------------------

def write_torch_state_dict(path, arrays):
    """What torch.save(state_dict) writes (zip: archive/data.pkl + one raw storage per tensor), written
    without torch, so that the original's checkpoint can be imitated here from its reference weights."""
    pkl = bytearray(b"\x80\x02ccollections\nOrderedDict\n)R")

    def text(s):
        b = s.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    def ints(values):
        return b"(" + b"".join(b"J" + struct.pack("<i", int(v)) for v in values) + b"t"

    storages = {}
    for i, (name, arr) in enumerate(arrays.items()):
        arr = np.ascontiguousarray(arr, np.float32)
        key = str(i)
        storages[key] = arr.tobytes()
        strides = [int(np.prod(arr.shape[d + 1:])) for d in range(arr.ndim)]
        pkl += text(name) + b"ctorch._utils\n_rebuild_tensor_v2\n("
        pkl += b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text(key) + text("cpu")
        pkl += b"J" + struct.pack("<i", arr.size) + b"tQ"
        pkl += b"J\x00\x00\x00\x00" + ints(arr.shape) + ints(strides) + b"\x89ccollections\nOrderedDict\n)Rt"
        pkl += b"Rs"
    pkl += b"."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", bytes(pkl))
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")


@pytest.fixture(scope="module")
def tsit_reference():
    from conftest import _shared
    return _shared("fixtures", "tsit_reference", "tsit_landscape_vae.npz")


def test_original_tsit_checkpoint_imports_strictly(tmp_path, tsit_reference):
    from jspade.parity import ReferenceArchive
    ref = ReferenceArchive(tsit_reference)
    state = collections.OrderedDict(ref.group("init.G"))
    folder = tmp_path / "original"
    folder.mkdir()
    write_torch_state_dict(folder / "latest_net_G.pth", state)
    model = SPADEModel(ref.opt, with_discriminator=False, with_vgg=False)
    import_pytorch_checkpoint(model, folder)
    got = state_arrays(model.netG)
    for name in ("content_stream.res_7.conv_1.weight_orig", "head_0.norm_0.mlp_gamma.weight",
                 "head_0.norm_0.mlp_beta.bias", "fc.bias"):
        np.testing.assert_array_equal(got[name], state[name])
    # a wrong key set is an error listing every offender
    broken = collections.OrderedDict(state)
    broken["content_stream.res_8.conv_0.bias"] = broken.pop("content_stream.res_0.conv_0.bias")
    del broken["up_3.norm_s.mlp_beta.weight"]
    write_torch_state_dict(folder / "latest_net_G.pth", broken)
    with pytest.raises(CheckpointError) as err:
        import_pytorch_checkpoint(SPADEModel(ref.opt, with_discriminator=False, with_vgg=False), folder)
    msg = str(err.value)
    assert "latest_net_G.pth" in msg and "TSITGenerator" in msg
    assert "content_stream.res_0.conv_0.bias" in msg and "up_3.norm_s.mlp_beta.weight" in msg
    assert "content_stream.res_8.conv_0.bias" in msg
    # and a SPADE generator does not silently take TSIT weights
    with pytest.raises(CheckpointError, match="SPADEGenerator"):
        spade = ModelConfig.from_dict({**ref.config, "netG": "spade", "norm_G": "spectralspadesyncbatch3x3"})
        load_state_strict(SPADEModel(spade, with_discriminator=False, with_vgg=False).netG, state)


# ---- training, resume, inference --------------------------------------------------------------------------

def tiny_tsit_config(output_dir, data_root, **train):
    model = ModelConfig(netG="tsit", label_nc=29, crop_size=128, aspect_ratio=1.0, ngf=2, ndf=4, num_D=1,
                        n_layers_D=2, use_vae=True, z_dim=8, num_upsampling_layers="more",
                        norm_G="spectralfadesyncbatch3x3", style_stream=True, alpha=0.5, lambda_vgg=0.0)
    data = DataConfig(dataset="synthetic", root=str(data_root), synthetic_n=8, preprocess_mode="fixed")
    options = dict(output_dir=str(output_dir), name="run", save_every=0, sample_every=0, log_every=1, num_samples=1)
    return Config(model, data, TrainConfig(**{**options, **train}), [Phase(epochs=2, batch_size=2, lr=4e-4)])


def test_tsit_training_step_and_exact_resume(tmp_path):
    # stops mid-epoch (4 batches per epoch) with a checkpoint
    whole, resumed = straight_and_resumed_runs(tiny_tsit_config, tmp_path, stop_at=2, total=3)
    a, b = whole.model.netG.state_dict(), resumed.model.netG.state_dict()
    assert any(k.startswith("style_stream.") for k in a)
    for k in ("content_stream.res_0.conv_0.weight_orig", "style_stream.res_3.conv_1.weight_orig", "fc.weight"):
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-5, err_msg=k)
    log = (tmp_path / "straight" / "run" / "log.jsonl").read_text()
    assert log.count("\"GAN\"") >= 3 and "NaN" not in log


def test_infer_on_a_tsit_checkpoint_with_a_style_folder(tmp_path):
    from jspade.checkpoint import save_checkpoint
    from jspade.inference import render_folder
    cfg = Config.default()
    cfg.model = tsit_opt(label_nc=29, crop_size=256, aspect_ratio=2.0, style_stream=True, alpha=1.0,
                         norm_G="spectralfadeinstance3x3", init_variance=1.0)
    jt.set_global_seed(2)
    model = SPADEModel(cfg.model, with_discriminator=False, with_vgg=False)
    ckpt = save_checkpoint(tmp_path / "tsit.pkl", model, {"config": cfg.to_dict()})
    labels, styles = tmp_path / "labels", tmp_path / "styles"
    labels.mkdir()
    styles.mkdir()
    for stem, color in (("a", (250, 20, 20)), ("b", (20, 20, 250))):
        Image.fromarray(np.full((96, 128), 3, np.uint8)).save(labels / f"{stem}.png")
        Image.fromarray(np.full((96, 128, 3), color, np.uint8)).save(styles / f"{stem}.jpg")
    out = tmp_path / "sub"
    assert render_folder(labels, ckpt, out, style_dir=styles, size=(256, 128))[0] == 2
    a, b = (np.asarray(Image.open(out / f"{s}.jpg"), np.float32) for s in "ab")
    assert a.shape == (128, 256, 3)
    # same label, same noise: only the reference photos differ, through the encoder and the style stream
    assert np.abs(a - b).mean() > 2


# ---- parity with the original TSIT code ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tsit_parity(tsit_reference):
    from jspade.parity import ParityRun
    run = ParityRun(tsit_reference)
    # The archive carries the original's own noise (noise.expected.*), which bounds every array; our own
    # noise (8 nudged reruns of the 512x384 step) is measured only if a gradient needs it.
    run.run(noise_runs=8, noise_only_if_needed=True)
    return run


def test_tsit_parity_every_array_within_format_bounds(tsit_parity):
    names = {c.name for c in tsit_parity.results}
    files = tsit_parity.ref.npz.files
    wanted = {k[len("expected."):] for k in files if k.startswith("expected.")}
    wanted |= {k for k in files if k.startswith("after_train_forward.")}
    assert wanted <= names, sorted(wanted - names)[:10]
    assert "G_step.grad.G.content_stream.res_0.conv_0.weight_orig" in names
    measured = {c.name: c for c in tsit_parity.results}
    # every expected array is held to tolerance + the reference's own noise (FORMAT.md)
    assert tsit_parity.ref.has_noise
    for name in wanted - {k for k in files if k.startswith("after_train_forward.")}:
        assert measured[name].reference_noise is not None, name
    # every array within its bound, G.eval_forward included: the eval-mode decoder amplifies rounding so
    # much that the original moves by 4.3e-3 under one-ulp nudges; it passes since SPADE/FADE's
    # modulation rounds as PyTorch's (fused_norm.py, no fused multiply-adds): 4.12e-3 against 4.42e-3.
    # Without AVX-512 oneDNN has no Winograd and the direct convolutions' rounding lands it at 5.06e-3
    # (1.14x; docs/tsit.md): held to 1.5x its bound there.
    winograd_runs = winograd.enabled() and "avx512f" in Path("/proc/cpuinfo").read_text()
    bad = [f"{c.name}: {c.error:.3g} > {c.tolerance:.3g} + reference noise {c.reference_noise} "
           f"(own noise {c.noise})" for c in tsit_parity.results
           if not c.passed and (winograd_runs or c.name != "G.eval_forward")]
    assert not bad, "\n".join(bad)
    eval_forward = measured["G.eval_forward"]
    assert eval_forward.error <= 1.5 * (eval_forward.tolerance + eval_forward.reference_noise), eval_forward


class BatchStatistics(jt.nn.Module):
    """A parameter-free norm over batch statistics: the wrong norm for an instance-norm stream, with the
    same (empty) state, so the archive's weights still load."""

    def execute(self, x, slope=None, residual=None):
        mean = x.mean(dims=(0, 2, 3), keepdims=True)
        var = ((x - mean) ** 2).mean(dims=(0, 2, 3), keepdims=True)
        out = (x - mean) / jt.sqrt(var + 1e-5)
        out = out if slope is None else jt.nn.leaky_relu(out, slope)
        return out if residual is None else out + residual


def _break_stream_norm(monkeypatch, tsit, opt):
    assert opt.norm_S.endswith("instance"), "the archive's stream uses instance norm"
    monkeypatch.setattr(tsit, "_stream_norm", lambda norm_type, n: BatchStatistics())


@pytest.mark.parametrize("bug", ["stream_downsampling", "fade_one_plus_gamma", "stream_norm"])
def test_tsit_parity_catches_a_real_bug(tsit_parity, monkeypatch, bug):
    """Break one thing the original does and check that the comparison fails far beyond its bound
    (tolerance + the reference's own noise)."""
    import jspade.models.normalization as normalization
    import jspade.models.tsit as tsit
    from jspade.models.resize import resize_bilinear
    if bug == "stream_downsampling":  # bilinear instead of nearest between the stream's blocks
        monkeypatch.setattr(tsit, "downsample_half",
                            lambda x: resize_bilinear(x, (x.shape[2] // 2, x.shape[3] // 2)))
    elif bug == "fade_one_plus_gamma":  # gamma instead of 1 + gamma
        def without_one(self, x, f, slope=None):
            gb = self.mlp_gamma_beta(f)
            out = self.param_free_norm(x) * gb[:, :x.shape[1]] + gb[:, x.shape[1]:]
            return out if slope is None else jt.nn.leaky_relu(out, slope)
        monkeypatch.setattr(normalization.FADE, "execute", without_one)
    else:  # batch statistics where the archive's stream normalises each instance
        _break_stream_norm(monkeypatch, tsit, tsit_parity.ref.opt)
    buggy, _ = tsit_parity.generator_forwards()
    measured = {c.name: c for c in tsit_parity.results}
    assert measured["G.train_forward"].passed  # the unbroken port is within its bound ...
    for name in ("G.train_forward", "G.eval_forward"):
        c = measured[name]
        err = float(np.abs(buggy[name] - tsit_parity.ref[f"expected.{name}"]).max())
        assert err > 10 * (c.tolerance + c.reference_noise), (name, err, c)  # ... the broken one far beyond
