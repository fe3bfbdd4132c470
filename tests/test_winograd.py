"""The Winograd 3x3 convolution must be Jittor's convolution up to float32 rounding: forward, input
gradient and weight gradient, through the modules the networks are built from; shapes where it does
not pay take Jittor's direct algorithm (forward and input gradient exactly, through this module's own
passes), and switched off it is Jittor's convolution itself; while rendering, kept weights give the same
result to the bit."""
import contextlib

import numpy as np
import pytest

from jspade.models import narrow_conv, winograd
from jspade.models.kept_weights import keeping_inference_weights
from jspade.runtime import jt

pytestmark = pytest.mark.skipif(not winograd.enabled(), reason="Winograd runs on the CPU with Jittor's oneDNN only")


def case(n, ic, oc, h, w, seed=0):
    rng = np.random.default_rng(seed)
    x = jt.array(rng.standard_normal((n, ic, h, w)).astype(np.float32))
    weight = jt.array((rng.standard_normal((oc, ic, 3, 3)) / np.sqrt(9 * ic)).astype(np.float32))
    bias = jt.array(rng.standard_normal(oc).astype(np.float32))
    probe = jt.array(rng.standard_normal((n, oc, h, w)).astype(np.float32))
    return x, weight, bias, probe


def forward_and_grads(conv, x, weight, bias, probe):
    y = conv(x, weight, bias)
    grads = jt.grad((y * probe).sum(), [x, weight, bias])
    return [y.numpy()] + [g.numpy() for g in grads]


def max_rel_error(actual, expected):
    return float(np.abs(np.asarray(actual, np.float64) - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("n,ic,oc,h,w", [(2, 32, 24, 24, 24), (1, 16, 40, 24, 32), (1, 64, 16, 32, 24)])
def test_forward_and_both_gradients_equal_jittors_convolution(n, ic, oc, h, w):
    assert winograd.winograd_pays((n, ic, h, w), oc) and not narrow_conv.applies((n, ic, h, w), oc), \
        "the case must take the Winograd path"
    x, weight, bias, probe = case(n, ic, oc, h, w)
    ours = forward_and_grads(winograd.conv3x3, x, weight, bias, probe)
    direct = forward_and_grads(lambda a, b, c: jt.nn.conv2d(a, b, c, 1, 1), x, weight, bias, probe)
    for name, a, b in zip(("output", "input gradient", "weight gradient", "bias gradient"), ours, direct):
        assert a.shape == b.shape, name
        # float32 rounding of a regrouped sum (measured 2e-7 to 5e-6 relative); a wrong tap, transposed
        # weight or missing channel is an error of order 1
        assert max_rel_error(a, b) < 2e-5, f"{name}: {max_rel_error(a, b):.2e}"


def test_a_changed_weight_is_caught():
    """The comparison above is sharp enough to see one weight of 288 per output channel moved by 0.01."""
    x, weight, bias, probe = case(2, 32, 24, 24, 24)
    w2 = weight.numpy()
    w2[5, 7, 1, 2] += 0.01
    err = max_rel_error(winograd.conv3x3(x, jt.array(w2), bias).numpy(), jt.nn.conv2d(x, weight, bias, 1, 1).numpy())
    assert err > 2e-5


def test_small_maps_and_other_shapes_are_jittors_convolution_exactly():
    """Where Winograd does not pay, the direct algorithm Jittor's convolution uses, through this module's
    own passes (kept buffers): output and input gradient equal Jittor's to the bit; the weight gradient
    sums the batch in another order (float32 rounding, 3e-6 relative measured)."""
    for shape in ((4, 32, 24, 12, 16), (1, 12, 48, 32, 24), (1, 256, 96, 6, 8)):  # 192 / 48 pixels; 12 channels
        x, weight, bias, probe = case(*shape)
        assert not winograd.winograd_pays(x.shape, weight.shape[0]) and not narrow_conv.applies(x.shape, weight.shape[0])
        ours = forward_and_grads(winograd.conv3x3, x, weight, bias, probe)
        direct = forward_and_grads(lambda a, b, c: jt.nn.conv2d(a, b, c, 1, 1), x, weight, bias, probe)
        for name, a, b in zip(("output", "input gradient", "weight gradient", "bias gradient"), ours, direct):
            if name == "weight gradient":
                assert max_rel_error(a, b) < 2e-5, f"{shape}: {name} {max_rel_error(a, b):.2e}"
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{shape}: {name}")
    x, _, _, _ = case(2, 16, 8, 24, 20)
    w4 = jt.array(np.random.default_rng(1).standard_normal((8, 16, 4, 4)).astype(np.float32))
    np.testing.assert_array_equal(winograd.conv2d(x, w4, None, 2, 2).numpy(), jt.nn.conv2d(x, w4, None, 2, 2).numpy())


def test_the_module_keeps_jittors_parameters_and_can_be_switched_off():
    jt.set_global_seed(0)
    conv = winograd.Conv2d(32, 24, 3, padding=1)
    assert sorted(conv.state_dict()) == ["bias", "weight"]
    x = case(2, 32, 24, 24, 24)[0]
    direct = jt.nn.conv2d(x, conv.weight, conv.bias, 1, 1).numpy()
    assert max_rel_error(conv(x).numpy(), direct) < 2e-5
    try:
        winograd.set_enabled(False)
        np.testing.assert_array_equal(conv(x).numpy(), direct)
    finally:
        winograd.set_enabled(True)


def test_tsit_generator_uses_winograd_where_it_pays():
    """TSIT's generator takes Winograd like SPADE's (its 512x384 reference archive keeps every array on the
    same side of its bound, docs/tsit.md): on and off differ, by no more than an ulp nudge of the weights moves it."""
    from jspade.config import ModelConfig
    from jspade.models.tsit import TSITGenerator
    from jspade.parity import ulp_nudge

    # 512x384: the stream's deepest maps are 3x4 (at 256x128 their 1x2-pixel instance norm amplifies any
    # rounding difference to ~3e-2)
    opt = ModelConfig(netG="tsit", label_nc=4, ngf=16, ndf=4, crop_size=512, aspect_ratio=4 / 3,
                      num_upsampling_layers="more", norm_G="spectralfadeinstance3x3", norm_S="spectralinstance",
                      use_vae=False)
    jt.set_global_seed(0)
    g = TSITGenerator(opt).init_weights()
    g.eval()  # no power iteration: every forward sees the same weights
    label = np.random.default_rng(0).integers(0, 4, (1, 384, 512))
    seg = jt.array((label[:, None] == np.arange(4)[None, :, None, None]).astype(np.float32))
    jt.sync_all()
    assert winograd.winograd_pays((1, 16, 384, 512), 16), "the finest convolutions take the Winograd path"
    with_winograd = g(seg).numpy()
    assert winograd.enabled()
    try:
        winograd.set_enabled(False)
        direct = g(seg).numpy()
        rng = np.random.RandomState(1)
        g.load_parameters({k: ulp_nudge(v.numpy(), rng) for k, v in g.state_dict().items()})
        nudged = g(seg).numpy()  # the direct algorithm on weights moved by at most one ulp
    finally:
        winograd.set_enabled(True)
    difference = float(np.abs(with_winograd - direct).max())
    noise = float(np.abs(nudged - direct).max())
    assert 0 < difference < 3 * noise, (difference, noise)  # Winograd's rounding: within the net's own noise


def test_wide_layers_count_the_whole_batch():
    """VGG19's 512-channel layers at 12x16 run by Winograd in a batch of 4, not alone; narrow ones never
    on maps under 512 pixels."""
    assert winograd.winograd_pays((4, 512, 12, 16), 512)
    assert not winograd.winograd_pays((1, 512, 12, 16), 512)
    assert not winograd.winograd_pays((4, 128, 12, 16), 128)
    assert not winograd.winograd_pays((1, 1024, 12, 16), 1024)  # faster alone, 250 MB more (docs/performance.md)


def conv_case(n, ic, oc, h, w):
    """case()'s input, weight and bias, a winograd.Conv2d holding them, and Jittor's convolution's output."""
    x, weight, bias, _ = case(n, ic, oc, h, w)
    conv = winograd.Conv2d(ic, oc, 3, padding=1)
    conv.weight.update(weight)
    conv.bias.update(bias)
    return x, weight, bias, conv, jt.nn.conv2d(x, weight, bias, 1, 1).numpy()


@pytest.mark.parametrize("n,ic,oc,h,w", [(1, 128, 256, 4, 6), (2, 12, 50, 10, 14), (1, 1024, 1024, 3, 4)])
def test_kept_weights_render_what_jittors_convolution_computes(n, ic, oc, h, w):
    """While rendering, a layer on the direct algorithm convolves with its weight kept in oneDNN's own
    layout (not reordered per forward): the same primitive as Jittor's convolution, so the same result to
    the bit, channel counts that are no multiple of oneDNN's blocks (12, 50) included."""
    x, weight, bias, conv, expected = conv_case(n, ic, oc, h, w)
    with jt.no_grad(), keeping_inference_weights():
        kept = conv.weight_for(x)
        assert isinstance(kept, winograd.KeptWeights) and kept.wino == 0
        first, second = conv(x).numpy(), conv(x).numpy()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, expected)
    with jt.no_grad():  # outside a rendering nothing is kept
        assert conv.weight_for(x) is conv.weight
    x2 = jt.array(np.random.default_rng(1).standard_normal((n, ic, 96, 128)).astype(np.float32))
    with jt.no_grad(), keeping_inference_weights():  # a large map where Winograd pays: the weight itself
        assert winograd.winograd_pays(x2.shape, oc) == (ic >= winograd.MIN_IN_CHANNELS)
        assert isinstance(conv.weight_for(x2), winograd.KeptWeights) != winograd.winograd_pays(x2.shape, oc)


@pytest.mark.parametrize("n,ic,oc,h,w", [(1, 256, 512, 8, 16), (2, 128, 64, 16, 32), (1, 64, 128, 32, 64)])
def test_wide_layers_render_by_winograd_with_transformed_weights_kept(n, ic, oc, h, w):
    """While rendering, a wide layer on a map from 4x8 to 64x64 pixels keeps Winograd's transformed
    weights (larger than the weight) and convolves with them: Jittor's convolution up to float32 rounding,
    the same result on every call, and a changed weight is seen."""
    x, weight, bias, conv, expected = conv_case(n, ic, oc, h, w)
    with jt.no_grad(), keeping_inference_weights():
        kept = conv.weight_for(x)
        assert isinstance(kept, winograd.KeptWeights) and kept.wino == 1
        assert kept.data.numel() > weight.numel()  # transformed, not the direct layout
        first, second = conv(x).numpy(), conv(x).numpy()
    np.testing.assert_array_equal(first, second)
    assert 0 < max_rel_error(first, expected) < 2e-5, max_rel_error(first, expected)
    conv.weight.update(weight * 2)
    with jt.no_grad(), keeping_inference_weights():
        doubled = conv(x).numpy()
    assert max_rel_error(doubled - bias.numpy()[:, None, None], 2 * (expected - bias.numpy()[:, None, None])) < 2e-5


@pytest.mark.parametrize("n,ic,oc,h,w,wino", [(2, 256, 512, 8, 16, 1), (2, 12, 50, 6, 5, 0)])
def test_a_frozen_layer_trains_from_weights_kept_once(n, ic, oc, h, w, wino):
    """A frozen layer (VGG19's) keeps what prepare keeps of its weight in training too, with no size bound
    on Winograd's transformed weights: made once, reused by every forward, remade when the weight
    changes (a load). Its forward and the input gradient of its first `varying` images are the unfrozen
    layer's up to float32 rounding; its weight has no gradient. A batch of many pixels keeps nothing."""
    x, weight, bias, conv, expected = conv_case(n, ic, oc, h, w)
    frozen = winograd.Conv2d(ic, oc, 3, padding=1, frozen=True)
    frozen.weight.update(weight)
    frozen.bias.update(bias)
    frozen.weight.stop_grad()
    frozen.bias.stop_grad()
    saved = winograd.KEPT_WINOGRAD_MAX_BYTES
    try:
        winograd.KEPT_WINOGRAD_MAX_BYTES = 1  # a rendering's bound does not apply
        kept = frozen.weight_for(x)
        assert isinstance(kept, winograd.KeptWeights) and kept.wino == wino
        assert frozen.weight_for(x) is kept
        probe = jt.array(np.random.default_rng(5).standard_normal((n, oc, h, w)).astype(np.float32))
        x.start_grad()
        ours = frozen(x, varying=1)
        grad = jt.grad((ours * probe).sum(), x).numpy()
        assert frozen.weight_for(x) is kept
        theirs = conv(x)
        their_grad = jt.grad((theirs * probe).sum(), x).numpy()
    finally:
        winograd.KEPT_WINOGRAD_MAX_BYTES = saved
    assert max_rel_error(ours.numpy(), expected) < 2e-5
    assert max_rel_error(grad[:1], their_grad[:1]) < 2e-5 and not np.any(grad[1:])
    frozen.weight.start_grad()
    with pytest.raises(RuntimeError, match="frozen"):
        jt.grad(frozen(x).sum(), frozen.weight).sync()
    frozen.weight.stop_grad()
    frozen.weight.update(weight * 2)
    assert frozen.weight_for(x) is not kept
    many = (n, ic, h, winograd.FROZEN_KEPT_MAX_BATCH_PIXELS // (n * h) + 1)  # a batch of many pixels
    assert frozen.weight_for_shape(many) is frozen.weight
    doubled = frozen(x).numpy() - bias.numpy()[:, None, None]
    assert max_rel_error(doubled, 2 * (expected - bias.numpy()[:, None, None])) < 2e-5


def test_kept_winograd_weights_have_a_size_bound():
    """A layer whose transformed weights would pass KEPT_WINOGRAD_MAX_BYTES (SPADE's 1024-channel layers
    at ngf 64) keeps the direct algorithm's layout instead."""
    x, weight, _, _ = case(1, 256, 512, 8, 16)
    saved = winograd.KEPT_WINOGRAD_MAX_BYTES
    try:
        winograd.KEPT_WINOGRAD_MAX_BYTES = 4 * weight.numel()  # the weight's own size
        with jt.no_grad(), keeping_inference_weights():
            kept = winograd.prepare(weight, x.shape, 1, 1)
        assert isinstance(kept, winograd.KeptWeights) and kept.wino == 0
    finally:
        winograd.KEPT_WINOGRAD_MAX_BYTES = saved


@pytest.mark.parametrize("n,ic,oc,h,w", [(1, 16, 32, 64, 128), (2, 32, 16, 40, 52), (3, 256, 128, 6, 10),
                                         (1, 128, 256, 8, 16), (2, 5, 7, 9, 11)])
def test_pointwise_convolutions_are_jittors(n, ic, oc, h, w):
    """1x1 convolutions (the learned shortcuts) as oneDNN matrix products: Jittor's convolution up to
    float32 rounding (output and input gradient the same sums, equal to the bit on the AVX-512 machines
    measured; the weight gradient summed over pixels and images in tiles, or in one product for a wide
    layer on one small image); channel counts off oneDNN's blocks and odd pixel counts included."""
    rng = np.random.default_rng(3)
    x = jt.array(rng.standard_normal((n, ic, h, w)).astype(np.float32))
    weight = jt.array(rng.standard_normal((oc, ic, 1, 1)).astype(np.float32))
    probe = jt.array(rng.standard_normal((n, oc, h, w)).astype(np.float32))
    ours = [winograd.conv2d(x, weight)] + jt.grad((winograd.conv2d(x, weight) * probe).sum(), [x, weight])
    theirs = [jt.nn.conv2d(x, weight)] + jt.grad((jt.nn.conv2d(x, weight) * probe).sum(), [x, weight])
    ours, theirs = [v.numpy() for v in ours], [v.numpy() for v in theirs]
    for name, a, b in zip(("output", "input gradient", "weight gradient"), ours, theirs):
        assert max_rel_error(a, b) < 2e-5, f"{name}: {max_rel_error(a, b):.2e}"
    w2 = weight.numpy()
    w2[oc - 1, ic - 1] += 0.01  # the last weight of the last block counts
    assert np.abs(winograd.conv2d(x, jt.array(w2)).numpy() - ours[0]).max() > 1e-3


def test_a_second_backward_through_one_forward_says_so():
    """A jt.Function's backward releases what its forward saved (else it stays in memory as long as the
    forward's graph is referenced: through Adam's update in a training step); a second backward through
    the same forward is an error that says so, not a wrong gradient."""
    x, weight, bias, probe = case(1, 16, 8, 24, 24)
    y = winograd.conv3x3(x, weight, bias)
    jt.sync(jt.grad((y * probe).sum(), [x, weight]))
    with pytest.raises(RuntimeError, match="second backward through the same forward"):
        jt.sync(jt.grad((y * probe).sum(), [x, weight]))


@pytest.mark.parametrize("n,ic,oc,h,w", [(2, 32, 24, 24, 24), (3, 64, 64, 4, 8), (2, 3, 16, 16, 16)])
def test_an_input_gradient_for_the_leading_images_only(n, ic, oc, h, w):
    """`varying`: the perceptual loss runs the fake and the (constant) real image as one batch; the input
    gradient is the full one for the leading images and exactly 0 for the rest, the output and the weight
    gradient are unchanged (Winograd, direct and narrow layers)."""
    x, weight, bias, probe = case(n, ic, oc, h, w, seed=3)
    full = forward_and_grads(winograd.conv3x3, x, weight, bias, probe)
    part = forward_and_grads(lambda a, b, c: winograd.conv3x3(a, b, c, varying=1), x, weight, bias, probe)
    np.testing.assert_array_equal(part[0], full[0])
    np.testing.assert_array_equal(part[1][:1], full[1][:1])
    assert not np.any(part[1][1:]) and np.any(full[1][1:])
    np.testing.assert_array_equal(part[2], full[2])


def test_the_perceptual_losss_pair_of_feature_stacks_equals_two_apart():
    """VGG19.features_of_pair: the fake's and the real's features as two separate forwards give them,
    and the fake's gradient (the real gets none)."""
    from jspade.models.vgg import PAIRED_SLICES, VGG19
    jt.set_global_seed(0, different_seed_for_mpi=False)
    vgg = VGG19()
    assert 0 < PAIRED_SLICES < 5
    rng = np.random.default_rng(6)
    fake = jt.array(rng.uniform(-1, 1, (2, 3, 48, 64)).astype(np.float32))
    real = jt.array(rng.uniform(-1, 1, (2, 3, 48, 64)).astype(np.float32))
    probes = None
    results = []
    for pair in (True, False):
        f, r = vgg.features_of_pair(fake, real) if pair else (vgg(fake), vgg(real))
        if probes is None:
            probes = [jt.array(rng.standard_normal(a.shape).astype(np.float32)) for a in f]
        loss = sum((a * p).sum() for a, p in zip(f, probes)) + sum(b.detach().sum() for b in r)
        results.append(([a.numpy() for a in f], [b.numpy() for b in r], jt.grad(loss, fake).numpy()))
    (fp, rp, gp), (fa, ra, ga) = results
    for a, b in zip(fp + rp, fa + ra):
        assert a.shape == b.shape and max_rel_error(a, b) < 2e-5
    assert max_rel_error(gp, ga) < 2e-5


def test_the_perceptual_losss_frozen_layers_keep_their_weights_before_the_step():
    """VGG19.keep_weights(image shape) makes what its frozen (512x512) layers keep for features_of_pair
    on such images, before a training step's graph runs: the step then finds them, not new ones."""
    from jspade.models.vgg import KEPT_FROM_WEIGHTS, VGG19
    jt.set_global_seed(0, different_seed_for_mpi=False)
    vgg = VGG19()
    frozen = [layer for layer in vgg.features if isinstance(layer, winograd.Conv2d) and layer.frozen]
    assert len(frozen) == 4 and all(layer.in_channels * layer.out_channels >= KEPT_FROM_WEIGHTS for layer in frozen)
    vgg.keep_weights((1, 3, 64, 96))
    made = [entry for entry in (winograd.kept_weights._kept.get(layer) for layer in frozen)]
    assert all(entry is not None and isinstance(entry[1], winograd.KeptWeights) for entry in made)
    fake = jt.array(np.random.default_rng(1).uniform(-1, 1, (1, 3, 64, 96)).astype(np.float32))
    jt.sync(vgg.features_of_pair(fake, fake * 0.5)[0])
    assert [winograd.kept_weights._kept.get(layer)[1] for layer in frozen] == [entry[1] for entry in made]


@pytest.mark.parametrize("n,ic,oc,h,w,keep", [
    (1, 32, 64, 24, 32, False),   # Winograd on the weight itself (a large map)
    (1, 256, 512, 8, 16, True),   # Winograd's transformed weights kept
    (2, 12, 50, 10, 14, True),    # the direct algorithm's kept layout
    (1, 64, 64, 4, 6, False),     # the direct algorithm on the weight
    (2, 16, 3, 12, 20, False),    # narrow_conv's kernel
    (1, 29, 16, 9, 40, True)])
def test_a_rendering_adds_bias_and_residual_in_the_convolutions_pass(n, ic, oc, h, w, keep):
    """Under jt.no_grad a residual block's `x_s + conv(x)` is one pass: (conv + residual) + bias, each
    addition rounded to float32; with gradients (Jittor's element-wise ops) the same sum to float32
    rounding, and the residual gets dy."""
    x, weight, bias, conv, jittors = conv_case(n, ic, oc, h, w)
    residual = jt.array(np.random.default_rng(3).standard_normal((n, oc, h, w)).astype(np.float32))
    with_grad = conv(x, residual=residual)
    np.testing.assert_allclose(with_grad.numpy(), conv(x).numpy() + residual.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(jt.grad((with_grad * 3).sum(), residual).numpy(), np.full((n, oc, h, w), 3, np.float32))
    calls = []
    code = winograd._code
    winograd._code = lambda *a: calls.append(a[2]) or code(*a)
    try:
        with jt.no_grad(), (keeping_inference_weights() if keep else contextlib.nullcontext()):
            assert isinstance(conv.weight_for(x), winograd.KeptWeights) == (keep and not narrow_conv.applies(x.shape, oc))
            rendered = conv(x, residual=residual).numpy()
            plain = conv(x).numpy()
            bare = winograd.conv2d(x, conv.weight_for(x), None, 1, 1).numpy()  # as the same rendering runs it
    finally:
        winograd._code = code
    bias = bias.numpy()[:, None, None]
    assert max_rel_error(plain, jittors) < 2e-5
    np.testing.assert_array_equal(plain, bare + bias)
    np.testing.assert_array_equal(rendered, (bare + residual.numpy()) + bias)
    if not narrow_conv.applies(x.shape, oc):  # one kernel took x, the weight, the bias and the residual
        assert [len(inputs) for inputs in calls[-3:]] == [4, 3, 2], [len(i) for i in calls]
