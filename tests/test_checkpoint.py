"""Weights in and out: our checkpoint round trip, strict loading with errors that name every
offending key, import of the original repository's real `.pth` files (read without torch), and
legacy spectral-norm states that kept `weight` instead of `weight_v`."""
import json
import os
import pickle

import numpy as np
import pytest

from jspade.checkpoint import (CheckpointError, import_pytorch_checkpoint, load_checkpoint, load_state_strict,
                               read_checkpoint, read_pytorch_state, save_checkpoint, state_arrays, write_checkpoint)
from jspade.safe_load import safe_load
from jspade.config import ModelConfig
from jspade.models.normalization import SpectralConv2d
from jspade.models.spade_model import SPADEModel
from jspade.runtime import jt

from jittor import nn


def tiny_opt(**kw):
    base = dict(label_nc=4, ngf=4, ndf=4, z_dim=8, crop_size=64, aspect_ratio=1.0, num_D=2, n_layers_D=3,
                use_vae=True, no_vgg_loss=True)
    base.update(kw)
    return ModelConfig(**base)


def inputs(opt, b=2, h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, opt.label_nc, (b, h, w))
    sem = (label[:, None] == np.arange(opt.semantic_nc)[None, :, None, None]).astype(np.float32)
    return jt.array(sem), jt.array(rng.standard_normal((b, opt.z_dim)).astype(np.float32))


def eval_output(net, sem, z):
    net.eval()
    with jt.no_grad():
        return net(sem, z=z).numpy()


@pytest.fixture(scope="module")
def trained_tiny():
    """A tiny model whose buffers (running stats, u/v) have moved away from their initial values."""
    jt.set_global_seed(1)
    opt = tiny_opt()
    model = SPADEModel(opt, with_vgg=False)
    model.train()
    sem, z = inputs(opt)
    model.netG(sem, z=z).sync()
    real = jt.array(np.random.default_rng(2).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32))
    for out in model.netD(jt.concat([sem, real], dim=1))[-1]:
        out.sync()
    jt.sync(list(model.netE(real)))
    jt.sync_all()
    return opt, model


def test_round_trip_of_our_format(tmp_path, trained_tiny):
    opt, model = trained_tiny
    path = save_checkpoint(tmp_path / "ckpt" / "latest.pkl", model, extra={"iteration": 7, "note": "x"})
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))  # written atomically, no leftovers
    before = {name: state_arrays(net) for name, net in model.networks().items()}
    assert set(before) == {"G", "D", "E"}
    assert not np.allclose(before["G"]["head_0.norm_0.param_free_norm.running_var"], 1.0)  # buffers moved

    jt.set_global_seed(99)
    other = SPADEModel(opt, with_vgg=False)
    sem, z = inputs(opt, b=1, seed=5)
    assert not np.array_equal(eval_output(other.netG, sem, z), eval_output(model.netG, sem, z))
    payload = load_checkpoint(path, other)
    assert payload["iteration"] == 7 and payload["note"] == "x"
    for name, net in other.networks().items():
        after = state_arrays(net)
        assert set(after) == set(before[name])
        for k, v in before[name].items():
            assert after[k].dtype == np.float32 and np.array_equal(after[k], v), f"{name}.{k}"
    np.testing.assert_array_equal(eval_output(other.netG, sem, z), eval_output(model.netG, sem, z))


def test_load_checkpoint_errors(tmp_path, trained_tiny):
    opt, model = trained_tiny
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        read_checkpoint(tmp_path / "absent.pkl")
    alien = tmp_path / "alien.pkl"
    alien.write_bytes(pickle.dumps({"G": {}}))
    with pytest.raises(CheckpointError, match="not a jspade checkpoint"):
        read_checkpoint(alien)
    # a checkpoint without E cannot fill a VAE model's encoder
    path = save_checkpoint(tmp_path / "g_only.pkl", SPADEModel(tiny_opt(use_vae=False), with_vgg=False))
    with pytest.raises(CheckpointError, match="no weights for netE"):
        load_checkpoint(path, model, networks=("E",))
    garbage = tmp_path / "latest_net_G.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="latest_net_G.pth"):
        read_pytorch_state(garbage)


def test_strict_load_names_every_offending_key(trained_tiny):
    opt, model = trained_tiny
    net = model.netG
    good = state_arrays(net)
    snapshot = {k: v.copy() for k, v in good.items()}

    missing = dict(good)
    del missing["up_1.conv_1.weight_v"], missing["head_0.norm_1.mlp_beta.bias"]
    with pytest.raises(CheckpointError) as err:
        load_state_strict(net, missing, source="m.pkl")
    msg = str(err.value)
    assert "m.pkl" in msg and "missing (2)" in msg
    assert "up_1.conv_1.weight_v" in msg and "head_0.norm_1.mlp_beta.bias" in msg

    extra = dict(good, **{"head_0.conv_9.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): head_0\.conv_9\.weight"):
        load_state_strict(net, extra)

    shaped = dict(good, **{"conv_img.weight": np.zeros((3, 8, 3, 3), np.float32)})
    with pytest.raises(CheckpointError) as err:
        load_state_strict(net, shaped)
    msg = str(err.value)
    assert "shape mismatch (1)" in msg and "conv_img.weight: (3, 8, 3, 3)" in msg and "(3, 4, 3, 3)" in msg

    everything = dict(missing, **{"bogus": np.zeros(1, np.float32), "fc.bias": np.zeros(5, np.float32)})
    with pytest.raises(CheckpointError) as err:
        load_state_strict(net, everything)
    msg = str(err.value)
    for key in ("up_1.conv_1.weight_v", "head_0.norm_1.mlp_beta.bias", "bogus", "fc.bias"):
        assert key in msg, key
    # a refused state changes nothing
    for k, v in state_arrays(net).items():
        assert np.array_equal(v, snapshot[k]), k
    # PyTorch's batch-norm counter is not an unexpected key
    load_state_strict(net, dict(good, **{"head_0.norm_0.param_free_norm.num_batches_tracked": np.array(3)}))


# ---- the original repository's checkpoints -------------------------------------------------------

def fixture_model(npz, **kw):
    opt = ModelConfig.from_dict(json.loads(str(npz["config_json"])))
    return SPADEModel(opt, with_vgg=False, **kw)


def test_import_nvlabs_checkpoint(reference_fixture, nvlabs_checkpoint_dir):
    npz = np.load(reference_fixture)
    raw = read_pytorch_state(nvlabs_checkpoint_dir / "latest_net_G.pth")
    assert any(k.endswith("weight_v") for k in raw) and all(isinstance(v, np.ndarray) for v in raw.values())

    imported = import_pytorch_checkpoint(fixture_model(npz), nvlabs_checkpoint_dir)
    direct = fixture_model(npz)
    for name, net in imported.networks().items():
        init = {k[len(f"init.{name}."):]: npz[k] for k in npz.files if k.startswith(f"init.{name}.")}
        assert init, name
        load_state_strict(direct.networks()[name], init)
        got = state_arrays(net)
        assert set(got) == set(init), name
        for k, v in init.items():
            assert np.array_equal(got[k], v), f"{name}.{k}"
    assert set(imported.networks()) == {"G", "D", "E"}

    sem = jt.array(npz["input.semantics"][:1])
    z = jt.array(npz["input.z"][:1])
    np.testing.assert_array_equal(eval_output(imported.netG, sem, z), eval_output(direct.netG, sem, z))


def test_import_into_a_mismatched_model_names_the_file(nvlabs_checkpoint_dir):
    model = SPADEModel(tiny_opt(label_nc=29, ngf=4, z_dim=256), with_discriminator=False, with_vgg=False)
    with pytest.raises(CheckpointError) as err:
        import_pytorch_checkpoint(model, nvlabs_checkpoint_dir)
    msg = str(err.value)
    assert "latest_net_G.pth" in msg and "does not fit SPADEGenerator" in msg
    # every 4x narrower layer mismatches: the message counts them and lists the first 12 (sorted)
    mismatch = [line for line in msg.splitlines() if "shape mismatch" in line]
    assert len(mismatch) == 1 and mismatch[0].rstrip().endswith("...")
    count = int(mismatch[0].split("shape mismatch (")[1].split(")")[0])
    assert count > 12 and mismatch[0].count(" in the model") == 12
    assert "G_middle_0.conv_0.weight_orig: (128, 128, 3, 3) in " in msg and "(64, 64, 3, 3) in the model" in msg


# ---- legacy spectral-norm states ---------------------------------------------------------------

def power_iterate(w, u, v, n=5):
    wm = w.reshape(w.shape[0], -1).astype(np.float64)
    u, v = u.astype(np.float64), v.astype(np.float64)
    for _ in range(n):
        v = wm.T @ u
        v /= np.linalg.norm(v)
        u = wm @ v
        u /= np.linalg.norm(u)
    return u, v


def to_legacy(state):
    """PyTorch < 1.1 kept `weight` = weight_orig / sigma and no `weight_v`. Returns (legacy state,
    {prefix: sigma}) after making each u, v a converged pair as in a trained checkpoint."""
    state, legacy, sigmas = dict(state), {}, {}
    for key in [k for k in state if k.endswith(".weight_orig")]:
        prefix = key[: -len("_orig")]
        w = state[key]
        u, v = power_iterate(w, state[prefix + "_u"], state[prefix + "_v"])
        state[prefix + "_u"], state[prefix + "_v"] = u.astype(np.float32), v.astype(np.float32)
        sigma = float(u @ w.reshape(w.shape[0], -1).astype(np.float64) @ v)
        sigmas[prefix] = sigma
        legacy[prefix] = (w.astype(np.float64) / sigma).astype(np.float32)
    out = {k: v for k, v in state.items() if not k.endswith(".weight_v")}
    out.update(legacy)
    return state, out, sigmas


def check_recovered_sigmas(net, sigmas):
    loaded = state_arrays(net)
    for prefix, sigma in sigmas.items():
        w = loaded[prefix + "_orig"].astype(np.float64)
        u, v = loaded[prefix + "_u"].astype(np.float64), loaded[prefix + "_v"].astype(np.float64)
        assert u @ w.reshape(w.shape[0], -1) @ v == pytest.approx(sigma, rel=1e-5), prefix


def test_legacy_spectral_state_recovers_v(trained_tiny):
    opt, model = trained_tiny
    modern, legacy, sigmas = to_legacy(state_arrays(model.netG))
    assert len(sigmas) > 10 and "head_0.conv_0.weight" in legacy and "head_0.conv_0.weight_v" not in legacy

    jt.set_global_seed(7)
    a, b = SPADEModel(opt, with_discriminator=False, with_vgg=False), \
        SPADEModel(opt, with_discriminator=False, with_vgg=False)
    load_state_strict(a.netG, modern)
    load_state_strict(b.netG, legacy, source="legacy.pth")
    check_recovered_sigmas(b.netG, sigmas)
    sem, z = inputs(opt, b=1, seed=3)
    np.testing.assert_allclose(eval_output(b.netG, sem, z), eval_output(a.netG, sem, z), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cin,cout,k", [(2, 8, 1), (6, 3, 3)])  # a tall and a wide weight matrix
def test_legacy_spectral_state_single_layer(cin, cout, k):
    rng = np.random.default_rng(cin * cout)
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    u1, v1 = power_iterate(w, rng.standard_normal(cout), rng.standard_normal(cin * k * k))
    wm = w.reshape(cout, -1).astype(np.float64)
    sigma = float(u1 @ wm @ v1)
    bias = rng.standard_normal(cout).astype(np.float32)
    modern = {"0.weight_orig": w, "0.weight_u": u1.astype(np.float32), "0.weight_v": v1.astype(np.float32),
              "0.bias": bias}
    legacy = {"0.weight_orig": w, "0.weight_u": u1.astype(np.float32), "0.bias": bias,
              "0.weight": (w / sigma).astype(np.float32)}
    layer, ref = (nn.Sequential(SpectralConv2d(cin, cout, k, padding=k // 2)) for _ in range(2))
    load_state_strict(layer, legacy)
    load_state_strict(ref, modern)
    got_v = layer[0].weight_v.numpy().astype(np.float64)
    assert got_v.shape == (cin * k * k,)
    assert u1 @ wm @ got_v == pytest.approx(sigma, rel=1e-5)
    layer.eval()
    ref.eval()
    x = jt.array(rng.standard_normal((1, cin, 5, 5)).astype(np.float32))
    np.testing.assert_allclose(layer(x).numpy(), ref(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_files_get_the_usual_mode_for_the_umask(tmp_path, umask):
    """Checkpoints and submission images must be readable by teammates and upload tools like any
    other file the user creates (the temporary file behind an atomic write is made 0600)."""
    from PIL import Image
    from jspade.atomic import save_image_atomic, write_bytes_atomic
    old = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"x")
        save_image_atomic(tmp_path / "b.jpg", Image.new("RGB", (4, 4)))
    finally:
        os.umask(old)
    for name in ("a.bin", "b.jpg"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


# --- contents checked before they are used (issue 20) ---------------------------------------------
def _write(path, payload):
    from jspade.checkpoint import write_checkpoint
    return write_checkpoint(path, payload)


def test_checkpoint_config_is_checked_before_any_network_is_built(tmp_path):
    from jspade.config import Config
    from jspade.inference import load_generator

    stored = Config.default().to_dict()
    stored["model"]["ngf"] = 100000  # was a segfault at 4 GB
    path = _write(tmp_path / "huge.pkl", {"format": "jspade-checkpoint-1", "networks": {}, "config": stored})
    with pytest.raises(CheckpointError, match=r"huge.pkl \[config\]: \[model\] ngf must be .*at most 256, got 100000"):
        load_generator(path)
    path = _write(tmp_path / "noconfig.pkl", {"format": "jspade-checkpoint-1", "networks": {}})
    with pytest.raises(CheckpointError, match="noconfig.pkl holds no configuration"):
        load_generator(path)


@pytest.mark.parametrize("bad, words", [(np.array([None] * 4, dtype=object), "not numbers"),
                                        (None, "not numbers"), ("text", "not numbers"),
                                        (np.full(4, np.nan, np.float32), "NaN or infinite")])
def test_a_weight_that_is_not_finite_numbers_is_refused_by_key(bad, words):
    layer = nn.Linear(4, 4)
    state = {k: v.numpy() for k, v in layer.state_dict().items()}
    state["bias"] = bad
    with pytest.raises(CheckpointError, match=f"src: bias holds .*{words}"):
        load_state_strict(layer, state, source="src")


def test_gamma_and_beta_are_one_weight_inside_and_the_originals_two_in_every_file():
    """SPADE's mlp_gamma and mlp_beta run as one convolution (normalization.GammaBetaConv2d); what is
    written and read keeps the original's two layers, in its order, and a load puts each half back."""
    from jspade.checkpoint import original_layout
    from jspade.models.normalization import SPADE
    layer = SPADE("spadesyncbatch3x3", 6, 4)
    assert "mlp_gamma_beta.weight" in layer.state_dict()
    names = [name for name, *_ in original_layout(layer)]
    assert names[-4:] == ["mlp_gamma.weight", "mlp_gamma.bias", "mlp_beta.weight", "mlp_beta.bias"]
    fused = layer.mlp_gamma_beta.weight.numpy()
    saved = state_arrays(layer)
    assert "mlp_gamma_beta.weight" not in saved and saved["mlp_gamma.weight"].shape == (6, 128, 3, 3)
    np.testing.assert_array_equal(saved["mlp_gamma.weight"], fused[:6])
    np.testing.assert_array_equal(saved["mlp_beta.weight"], fused[6:])
    swapped = {**saved, "mlp_gamma.weight": saved["mlp_beta.weight"], "mlp_beta.weight": saved["mlp_gamma.weight"],
               "mlp_beta.bias": np.arange(6, dtype=np.float32)}
    load_state_strict(layer, swapped)
    np.testing.assert_array_equal(layer.mlp_gamma_beta.weight.numpy(), np.concatenate([fused[6:], fused[:6]]))
    np.testing.assert_array_equal(layer.mlp_gamma_beta.bias.numpy()[6:], np.arange(6))
    with pytest.raises(CheckpointError, match=r"shape mismatch \(1\): mlp_beta\.bias: \(12,\)"):
        load_state_strict(layer, {**saved, "mlp_beta.bias": np.zeros(12, np.float32)})


def test_gamma_and_beta_are_initialised_as_two_layers():
    """xavier's scale counts one layer's outputs: stacked, gamma and beta would start 1.2x smaller."""
    from jspade.models.base import BaseNetwork
    from jspade.models.normalization import SPADE

    class Holder(BaseNetwork):
        def __init__(self):
            self.norm = SPADE("spadeinstance3x3", 128, 4)
    jt.set_global_seed(0)
    weight = Holder().init_weights("xavier", 1.0).norm.mlp_gamma_beta.weight.numpy()
    expected = np.sqrt(2.0 / (128 * 9 + 128 * 9))
    for half in (weight[:128], weight[128:]):
        assert abs(half.std() / expected - 1) < 0.02


def test_optimizer_state_is_saved_in_the_original_layout_and_resumes(tmp_path):
    """Adam's moments are checkpointed per original parameter (mlp_gamma and mlp_beta apart), so a
    checkpoint from before the stacked weight resumes, and one written now reads back the same."""
    from jspade.checkpoint import original_layout
    from jspade.models.generator import SPADEResnetBlock
    from jspade.train.step import adam_for
    jt.set_global_seed(0)
    block = SPADEResnetBlock(8, 4, "spadesyncbatch3x3", 5)
    optimizer = adam_for([block], betas=(0.5, 0.9))
    rng = np.random.default_rng(0)
    x = jt.array(rng.standard_normal((2, 8, 6, 6)).astype(np.float32))
    sem = jt.array(np.eye(5, dtype=np.float32)[rng.integers(0, 5, (2, 6, 6))].transpose(0, 3, 1, 2))
    optimizer.lr = 1e-3
    optimizer.step((block(x, sem) ** 2).mean())
    state = optimizer.state_dict()
    trainable = {id(p) for p in optimizer.params}
    own = block.state_dict()
    original = [name for name, key, *_ in original_layout(block) if id(own[key]) in trainable]
    assert len(state["v"]) == len(state["m"]) == len(original) > len(optimizer.params)
    at = original.index("norm_0.mlp_beta.weight")
    stacked = [id(p) for p in optimizer.params].index(id(block.norm_0.mlp_gamma_beta.weight))
    np.testing.assert_array_equal(state["v"][at], optimizer.v[stacked].numpy()[8:])
    again = adam_for([block], betas=(0.5, 0.9))
    write_checkpoint(tmp_path / "state.pkl", state)  # through a file and the safe reader, as a resume reads it
    again.load_state_dict(safe_load(tmp_path / "state.pkl"))
    for a, b in zip(again.v + again.m, optimizer.v + optimizer.m):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(CheckpointError, match="optimizer state holds"):
        again.load_state_dict({**state, "v": state["v"][:-1]})
