"""SPADE's and FADE's fused normalisation kernels (jspade/models/fused_norm.py) must compute what the
layer-by-layer Jittor ops compute — forward, every gradient, running statistics — to float32 rounding,
for batch and instance norm, training and eval mode, with and without the leaky ReLU they fold in."""
import numpy as np
import pytest

from jspade.models import fused_norm
from jspade.models.generator import SPADEResnetBlock
from jspade.models.kept_weights import keeping_inference_weights
from jspade.models.normalization import FADE, SegmentationMap, SyncBatchNorm, batch_statistics
from jspade.models.tsit import FADEResnetBlock
from jspade.runtime import jt


@pytest.fixture
def restore_fused():
    yield
    fused_norm.set_enabled(True)


def rel_err(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def run_block(block, x, cond, fused, train):
    """(output, {name: gradient} incl. 'x', {name: buffer}) of a weighted sum of the block's output."""
    fused_norm.set_enabled(fused)
    block.train() if train else block.eval()
    xv = jt.array(x)
    out = block(xv, cond)
    probe = jt.array(np.random.default_rng(7).standard_normal(out.shape).astype(np.float32))
    names = [k for k, p in block.named_parameters() if not p.is_stop_grad()]
    params = [p for k, p in block.named_parameters() if not p.is_stop_grad()]
    grads = jt.grad((out * probe).sum(), [xv] + params)
    buffers = {k: v.numpy().copy() for k, v in block.state_dict().items() if "running" in k}
    return out.numpy(), dict(zip(["x"] + names, [g.numpy() for g in grads])), buffers


def spade_case(norm, fin, fout, seed=0, n=2, h=12, w=16, labels=6):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, labels - 1, (n, h, w))
    semantics = np.eye(labels, dtype=np.float32)[ids].transpose(0, 3, 1, 2)
    jt.set_global_seed(seed)
    block = SPADEResnetBlock(fin, fout, norm, labels)
    x = (rng.standard_normal((n, fin, h, w)) * 3 + 1).astype(np.float32)
    return block, x, SegmentationMap(jt.array(semantics), labels)


def assert_same(fused, unfused, what):
    out_f, grads_f, buffers_f = fused
    out_u, grads_u, buffers_u = unfused
    assert rel_err(out_f, out_u) < 2e-6, f"{what}: output differs by {rel_err(out_f, out_u):.2e}"
    for name, g in grads_u.items():
        # a gradient that is zero but for rounding (a bias before batch norm) has no relative scale
        if np.abs(g).max() < 1e-3 * max(np.abs(v).max() for v in grads_u.values()):
            continue
        assert rel_err(grads_f[name], g) < 1e-5, f"{what}: d/d{name} differs by {rel_err(grads_f[name], g):.2e}"
    for name, b in buffers_u.items():
        np.testing.assert_allclose(buffers_f[name], b, rtol=1e-6, atol=1e-7, err_msg=f"{what}: {name}")


@pytest.mark.parametrize("norm", ["spadesyncbatch3x3", "spadeinstance3x3", "spadebatch5x5"])
@pytest.mark.parametrize("train", [True, False])
def test_spade_block_fused_equals_layer_by_layer(norm, train, restore_fused):
    block, x, cond = spade_case(norm, 24, 16)  # learned shortcut: norm_s without, norm_0/1 with the ReLU
    if not train:  # running statistics that are not the initial 0/1
        block.train()
        block(jt.array(x * 0.5 + 2), cond).sync()
    state = {k: v.numpy().copy() for k, v in block.state_dict().items()}
    unfused = run_block(block, x, cond, False, train)
    block.load_parameters(state)
    fused = run_block(block, x, cond, True, train)
    assert_same(fused, unfused, f"{norm}, {'train' if train else 'eval'}")


def test_fade_block_fused_equals_layer_by_layer(restore_fused):
    rng = np.random.default_rng(3)
    jt.set_global_seed(3)
    block = FADEResnetBlock(16, 8, "fadesyncbatch3x3")
    x = (rng.standard_normal((2, 16, 8, 12)) * 2).astype(np.float32)
    feature = jt.array(rng.standard_normal((2, 16, 8, 12)).astype(np.float32))
    state = {k: v.numpy().copy() for k, v in block.state_dict().items()}
    unfused = run_block(block, x, feature, False, True)
    block.load_parameters(state)
    fused = run_block(block, x, feature, True, True)
    assert_same(fused, unfused, "FADE block")


def run_network(net, x, fused, train):
    """(outputs, {name: gradient} incl. 'x', {name: buffer}) of a weighted sum of `net`(x)'s outputs
    (every feature map of a discriminator, both of an encoder)."""
    fused_norm.set_enabled(fused)
    net.train() if train else net.eval()
    xv = jt.array(x)
    out = net(xv)
    flat = [o for scale in out for o in (scale if isinstance(scale, list) else [scale])] \
        if isinstance(out, (list, tuple)) else [out]
    rng = np.random.default_rng(7)
    loss = sum((o * jt.array(rng.standard_normal(o.shape).astype(np.float32))).sum() for o in flat)
    named = [(k, p) for k, p in net.named_parameters() if not p.is_stop_grad()]
    grads = jt.grad(loss, [xv] + [p for _, p in named])
    buffers = {k: v.numpy().copy() for k, v in net.state_dict().items() if "running" in k}
    return ([o.numpy() for o in flat], dict(zip(["x"] + [k for k, _ in named], [g.numpy() for g in grads])),
            buffers)


def assert_networks_same(net, x, train, what):
    state = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    unfused = run_network(net, x, False, train)
    net.load_parameters(state)
    fused = run_network(net, x, True, train)
    net.load_parameters(state)
    for i, (f, u) in enumerate(zip(fused[0], unfused[0])):
        assert rel_err(f, u) < 2e-6, f"{what}: output {i} differs by {rel_err(f, u):.2e}"
    assert_same((fused[0][0], fused[1], fused[2]), (unfused[0][0], unfused[1], unfused[2]), what)


@pytest.mark.parametrize("norm_S", ["instance", "syncbatch"])
@pytest.mark.parametrize("train", [True, False])
def test_stream_block_norms_fused_equal_layer_by_layer(norm_S, train, restore_fused):
    """TSIT's content stream: conv -> norm (batch norm's affine included) -> leaky ReLU in one pass."""
    from jspade.models.tsit import StreamResnetBlock
    rng = np.random.default_rng(9)
    jt.set_global_seed(9)
    block = StreamResnetBlock(6, 12, "spectral" + norm_S)  # learned shortcut: three norms
    for m in block.modules():  # batch norm's affine away from its initial 1 / 0
        if isinstance(m, SyncBatchNorm):
            m.weight.update(jt.array(rng.uniform(0.5, 1.5, m.num_features).astype(np.float32)))
            m.bias.update(jt.array(rng.standard_normal(m.num_features).astype(np.float32)))
    x = (rng.standard_normal((2, 6, 10, 14)) * 2 + 0.5).astype(np.float32)
    if not train:
        block.train()
        block(jt.array(x * 0.5 + 1)).sync()
    assert_networks_same(block, x, train, f"stream block {norm_S}")


@pytest.mark.parametrize("norm", ["spectralinstance", "spectralsyncbatch"])
def test_discriminator_and_encoder_norms_fused_equal_layer_by_layer(norm, restore_fused):
    """The discriminator's and the encoder's conv -> norm -> leaky ReLU, every feature map compared."""
    from jspade.config import ModelConfig
    from jspade.models.discriminator import MultiscaleDiscriminator
    from jspade.models.encoder import ConvEncoder
    opt = ModelConfig(label_nc=3, ngf=4, ndf=8, crop_size=64, aspect_ratio=1.0, num_D=2, n_layers_D=3,
                      norm_D=norm, norm_E=norm, use_vae=True)
    rng = np.random.default_rng(10)
    jt.set_global_seed(10)
    x = rng.standard_normal((2, opt.semantic_nc + 3, 64, 64)).astype(np.float32)
    assert_networks_same(MultiscaleDiscriminator(opt).init_weights(), x, True, f"discriminator {norm}")
    assert_networks_same(ConvEncoder(opt).init_weights(), x[:, :3], True, f"encoder {norm}")


def test_fused_kernel_sees_a_wrong_gamma(restore_fused):
    """The comparison is sharp: the fused layer with beta's and gamma's roles swapped is caught."""
    layer = FADE("fadeinstance3x3", 8, 8)
    rng = np.random.default_rng(0)
    x = jt.array(rng.standard_normal((1, 8, 6, 6)).astype(np.float32))
    feature = jt.array(rng.standard_normal((1, 8, 6, 6)).astype(np.float32))
    fused_norm.set_enabled(False)
    expected = layer(x, feature).numpy()
    fused_norm.set_enabled(True)
    np.testing.assert_allclose(layer(x, feature).numpy(), expected, rtol=1e-5, atol=1e-6)
    conv = layer.mlp_gamma_beta  # gamma's 8 channels, then beta's: swap them
    for w in (conv.weight, conv.bias):
        w.update(jt.concat([w[8:], w[:8]]))
    assert rel_err(layer(x, feature).numpy(), expected) > 1e-2


def test_inference_path_keeps_nothing_and_gives_the_same_output(restore_fused):
    """Under jt.no_grad (a rendering) a block's forward alone runs, its residual sum inside the last
    convolution's pass: the output of the forward with gradients (to the bit here; Jittor's fused
    element-wise kernel may order conv + bias + residual otherwise elsewhere: float32 rounding)."""
    block, x, cond = spade_case("spadesyncbatch3x3", 16, 16, seed=4)
    block.eval()
    with_grad = block(jt.array(x), cond).numpy()
    with jt.no_grad():
        without = block(jt.array(x), cond).numpy()
    assert rel_err(without, with_grad) < 1e-6


@pytest.mark.parametrize("norm_S", ["instance", "syncbatch"])
def test_a_rendered_stream_block_adds_its_shortcut_in_the_norms_pass(norm_S, restore_fused, monkeypatch):
    """TSIT's content stream under jt.no_grad: x_s + leaky_relu(norm(conv_1(...))) in the norm's own
    pass (an instance norm's statistics too), the same bits as the forward with gradients."""
    from jspade.models.tsit import StreamResnetBlock
    code, sources = fused_norm._code, []
    monkeypatch.setattr(fused_norm, "_code", lambda *a: sources.append(a[3]) or code(*a))
    rng = np.random.default_rng(11)
    jt.set_global_seed(11)
    for fin, fout in ((6, 12), (12, 12)):  # learned shortcut, and the identity
        block = StreamResnetBlock(fin, fout, "spectral" + norm_S)
        x = jt.array((rng.standard_normal((2, fin, 10, 14)) * 2 + 0.5).astype(np.float32))
        block.train()
        block(x * 0.5 + 1).sync()  # running statistics that are not the initial 0/1
        block.eval()
        with_grad = block(x).numpy()
        sources.clear()
        with jt.no_grad():
            without = block(x).numpy()
        np.testing.assert_array_equal(without, with_grad)
        with_residual = (fused_norm._INSTANCE_SRC.replace("{residual}", "in1_p") if norm_S == "instance"
                         else fused_norm._AFFINE_RESIDUAL_SRC)
        assert sources.count(with_residual) == 1, sources
        if norm_S == "instance":  # each instance norm one kernel, its statistics included
            assert all(src.startswith("fused_norm::instance_forward") for src in sources), sources


def test_statistics_of_large_planes_are_accurate(restore_fused):
    """The float64 sums: a channel of 2^20 values with a large mean keeps its variance."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((1, 2, 1024, 1024)) * 0.01 + 100).astype(np.float32)
    sums = fused_norm.sums(jt.array(x), False).numpy()
    np.testing.assert_allclose(sums, x.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-12)
    mean = (sums / x[0, 0].size).astype(np.float32)
    centred = fused_norm.sums(jt.array(x), False, jt.array(mean)).numpy()
    expected = ((x - mean.reshape(1, 2, 1, 1)) ** 2).astype(np.float64).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(centred, expected, rtol=1e-6)


@pytest.mark.parametrize("shape", [(4, 16, 24, 32), (1, 512, 7, 9), (8, 32, 1, 1)])
def test_statistics_in_one_kernel_are_the_two_sums_arithmetic_to_the_bit(shape, restore_fused):
    """Batch statistics without MPI come from one kernel (both sums and the arithmetic after them): the
    same float32 mean, variance and 1/std as the sums followed by batch_statistics' float64 ops, so the
    networks' outputs (and TSIT's ill-conditioned eval forward) do not move."""
    rng = np.random.default_rng(shape[1])
    x = jt.array((rng.standard_normal(shape) * 30 + 7).astype(np.float32))
    count = x.numel() // shape[1]
    mean = (fused_norm.sums(x, False) / count).float32()
    var = fused_norm.sums(x, False, mean).float32().float64() / count
    invstd = (1.0 / jt.sqrt(var + 1e-5)).float32()
    got = fused_norm.statistics(x, 1e-5)
    for name, a, b in zip(("mean", "var", "invstd"), got, (mean, var.float32(), invstd)):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    # and it is what the layers use
    for a, b in zip(batch_statistics(x, 1e-5)[:3], got):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_weights_kept_between_inference_forwards_follow_every_update():
    """Rendering keeps spectral norm's W / sigma and convolution weights (in oneDNN's layout) between
    forwards; a changed parameter (a load, a training step, an EMA update: Var.update) must show in the
    next forward."""
    block, x, cond = spade_case("spectralspadesyncbatch3x3", 16, 16, seed=6)
    block.eval()
    rng = np.random.default_rng(6)
    changes = [lambda: block.conv_1.weight_orig.update(  # spectral norm's W / sigma
                   block.conv_1.weight_orig + jt.array(rng.standard_normal(block.conv_1.weight_orig.shape)
                                                       .astype(np.float32))),
               lambda: block.norm_0.mlp_gamma_beta.weight.update(block.norm_0.mlp_gamma_beta.weight * 2.0),
               lambda: block.norm_0.mlp_gamma_beta.bias.update(block.norm_0.mlp_gamma_beta.bias + 1.0)]
    with jt.no_grad(), keeping_inference_weights():
        before = block(jt.array(x), cond).numpy()
        np.testing.assert_array_equal(block(jt.array(x), cond).numpy(), before)  # kept: the same result
    for change in changes:
        change()
        with jt.no_grad(), keeping_inference_weights():
            after = block(jt.array(x), cond).numpy()
        expected = block(jt.array(x), cond).numpy()  # with gradients: computed afresh, nothing kept
        np.testing.assert_allclose(after, expected, rtol=1e-6, atol=1e-6)
        assert np.abs(after - before).max() > 0.05
        before = after


def test_training_processes_keep_no_weights():
    """Outside rendering (training, its FID and samples under no_grad) nothing is kept."""
    from jspade.models import kept_weights
    block, x, cond = spade_case("spectralspadesyncbatch3x3", 16, 16, seed=8)
    block.eval()
    with jt.no_grad():
        block(jt.array(x), cond).sync()
    assert not kept_weights.is_kept(block.conv_0)
    with jt.no_grad(), keeping_inference_weights():
        block(jt.array(x), cond).sync()
    assert kept_weights.is_kept(block.conv_0) and kept_weights.is_kept(block.conv_1)
    block.train()
    block(jt.array(x), cond).sync()  # a forward with gradients drops what was kept
    assert not kept_weights.is_kept(block.conv_0)


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (64, 3, 1, 1), (5, 7, 4, 4)])
def test_spectral_norm_gradient_in_one_kernel_equals_jittors(shape, restore_fused):
    """In training, spectral norm's W / sigma keeps Jittor's forward (the same value to the bit) and takes
    its gradient from one kernel: the division's and sigma's parts (u^T W v, u and v constant), equal to
    Jittor's autograd to float32 rounding; without sigma's part it would be far off."""
    from jspade.models.normalization import SpectralConv2d
    jt.set_global_seed(3)
    conv = SpectralConv2d(shape[1], shape[0], shape[2], padding=shape[2] // 2)
    conv.train()
    w = conv.weight_orig.numpy()
    probe = (np.random.default_rng(1).standard_normal(shape) + w).astype(np.float32)  # correlated with W
    u0, v0 = conv.weight_u.numpy(), conv.weight_v.numpy()
    results = []
    for fused in (True, False):
        fused_norm.set_enabled(fused)
        conv.weight_u.update(jt.array(u0))
        conv.weight_v.update(jt.array(v0))
        wn = conv.normalized_weight()
        grad = jt.grad((wn * jt.array(probe)).sum(), conv.weight_orig)
        results.append((wn.numpy(), grad.numpy()))
    (wn_f, g_f), (wn_u, g_u) = results
    np.testing.assert_array_equal(wn_f, wn_u)
    assert rel_err(g_f, g_u) < 1e-6, rel_err(g_f, g_u)
    sigma = float(np.abs(w).max() / np.abs(wn_u).max())
    assert rel_err(probe / sigma, g_u) > 1e-3  # sigma's part of the gradient matters


@pytest.mark.parametrize("shape,slope", [((1, 5, 64, 96), 0.2), ((3, 4, 7, 9), None), ((1, 2, 1, 2), 0.2)])
def test_a_rendered_instance_norm_is_one_kernel_with_the_same_bits(shape, slope, restore_fused):
    """Its statistics and affine in one pass per plane: the values of the two kernels of training's path."""
    from jspade.models.normalization import InstanceNorm2d
    rng = np.random.default_rng(12)
    x = jt.array((rng.standard_normal(shape) * 3 + 50).astype(np.float32))
    residual = jt.array(rng.standard_normal(shape).astype(np.float32))
    layer = InstanceNorm2d(shape[1])
    for r in (None, residual):
        expected = fused_norm.normalize(x, layer.statistics(x), slope=slope, residual=r).numpy()
        with jt.no_grad():
            np.testing.assert_array_equal(fused_norm.instance_norm_forward(x, layer.eps, slope, r).numpy(), expected)
    assert np.abs(expected - residual.numpy()).max() > 0.1  # a real normalisation, not a copy
