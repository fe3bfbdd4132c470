"""Rewrites that do less work than the original but compute the same thing, each compared with the
straightforward form it replaces; and the option that does change the arithmetic (reuse_fake)."""
import numpy as np

from jspade.models import losses
from jspade.config import ModelConfig
from jspade.data.semantics import make_semantics
from jspade.models import winograd
from jspade.models.spade_model import SPADEModel
from jspade.runtime import jt


def labels_and_segmap(n=2, classes=5, h=7, w=9, seed=0):
    rng = np.random.default_rng(seed)
    return make_semantics(jt.array(rng.integers(0, classes, (n, 1, h, w)).astype(np.int32)), classes)


def assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    err = np.abs(actual - expected).max()
    assert err <= 1e-5 * max(np.abs(expected).max(), 1.0), f"{what}: max error {err:.3g}"


def test_vgg_loss_gradient_unchanged_by_constant_real_features():
    jt.set_global_seed(0, different_seed_for_mpi=False)
    from jspade.models.vgg import VGG19
    vgg = VGG19()
    rng = np.random.default_rng(4)
    fake = jt.array(rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32))
    real = jt.array(rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32))
    loss = losses.vgg_loss(vgg, fake, real)
    # the reference: both feature stacks in one graph, real's detached per layer (the original's form)
    ref = sum(w * jt.abs(f - r.detach()).mean()
              for w, f, r in zip(losses.VGG_LAYER_WEIGHTS, vgg(fake), vgg(real)))
    assert_close(loss.numpy(), ref.numpy(), "VGG loss")
    assert_close(jt.grad(loss, fake).numpy(), jt.grad(ref, fake).numpy(), "VGG loss gradient")


def test_discriminator_step_reuses_a_given_fake_only_when_asked():
    opt = ModelConfig(label_nc=4, ngf=4, ndf=4, crop_size=64, aspect_ratio=1.0, use_vae=False, no_vgg_loss=True)
    jt.set_global_seed(0, different_seed_for_mpi=False)
    model = SPADEModel(opt)
    model.train()
    seg = labels_and_segmap(n=1, classes=4, h=64, w=64)
    real = jt.array(np.random.default_rng(5).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32))
    given = jt.array(np.random.default_rng(6).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32))
    reused = model.discriminator_losses(seg, real, fake=given)
    pred_fake, pred_real = model.discriminate(seg, given, real)
    expected = losses.gan_loss(pred_fake, False, for_discriminator=True)
    assert_close(reused["D_Fake"].numpy(), expected.numpy(), "D_Fake on the given fake")
    fresh = model.discriminator_losses(seg, real)  # the default renders its own fake
    assert abs(float(fresh["D_Fake"].item()) - float(expected.item())) > 1e-6


def test_spade_reads_label_ids_as_the_dense_convolution_of_the_one_hot_map():
    """SPADE's mlp_shared from the label ids (label_conv) equals the dense convolution of the semantics,
    forward and weight gradient: plain one-hot, one-hot + instance edges, and a pixel with no class."""
    from jspade.data.semantics import instance_edges
    from jspade.models.normalization import SPADE, SegmentationMap
    from jspade.models.resize import resize_nearest
    rng = np.random.default_rng(7)
    label = rng.integers(0, 6, (2, 1, 12, 16)).astype(np.int32)
    label[0, 0, 0, 0] = 6  # outside the 6 classes: an all-zero one-hot pixel
    sem = make_semantics(jt.array(label), 6)
    edges = instance_edges(jt.array(rng.integers(0, 3, (2, 1, 12, 16)).astype(np.int32)))
    for semantics in (sem, jt.concat([sem, edges], dim=1)):
        jt.set_global_seed(0, different_seed_for_mpi=False)
        spade = SPADE("spadeinstance3x3", 4, semantics.shape[1])
        conv = spade.mlp_shared[0]
        for size in ((12, 16), (6, 8), (24, 32)):
            from_ids = spade.hidden_from_ids(SegmentationMap(semantics, 6), size)
            dense = conv(resize_nearest(semantics, size))
            assert_close(from_ids.numpy(), dense.numpy(), f"mlp_shared at {size}")
            w = jt.array(rng.standard_normal(dense.shape).astype(np.float32))
            for a, b, name in zip(jt.grad((from_ids * w).sum(), [conv.weight, conv.bias]),
                                  jt.grad((dense * w).sum(), [conv.weight, conv.bias]), ("weight", "bias")):
                assert_close(a.numpy(), b.numpy(), f"mlp_shared {name} gradient at {size}")


def test_generator_with_label_ids_equals_the_dense_generator():
    """The whole SPADE generator, forward and every parameter gradient, with SPADE reading label ids
    against the same generator convolving the dense one-hot map (the original's form). Both run Jittor's
    direct convolutions: this tiny generator (batch norm over 8 values at its 2x2 start) amplifies the two
    paths' rounding differences, and Winograd's, 5x larger than direct's, took fc.weight's gradient to
    2.8e-3 of the step's largest; the rewrite under test is the label-id gather, not Winograd
    (tests/test_winograd.py)."""
    with winograd.direct():
        _generator_with_label_ids_equals_the_dense_generator()


def _generator_with_label_ids_equals_the_dense_generator():
    import jspade.models.generator as generator
    opt = ModelConfig(label_nc=5, ngf=4, ndf=4, crop_size=64, aspect_ratio=1.0, use_vae=False, no_vgg_loss=True)
    jt.set_global_seed(0, different_seed_for_mpi=False)
    model = SPADEModel(opt, with_discriminator=False)
    netG = model.netG
    netG.train()
    jt.sync_all(True)
    state = {k: v.numpy().copy() for k, v in netG.state_dict().items()}
    seg = labels_and_segmap(n=2, classes=5, h=64, w=64)
    w = jt.array(np.random.default_rng(8).standard_normal((2, 3, 64, 64)).astype(np.float32))
    params = [p for p in netG.parameters() if not p.is_stop_grad()]

    def step():
        out = netG(seg)
        return out.numpy(), [g.numpy() for g in jt.grad((out * w).sum(), params)]

    with_ids = step()
    netG.load_parameters(state)  # the same spectral u/v and running statistics for the second pass
    original = generator.SegmentationMap
    generator.SegmentationMap = lambda semantics, num_ids, style=None: semantics  # SPADE then convolves the dense map
    try:
        dense = step()
    finally:
        generator.SegmentationMap = original
    assert_close(with_ids[0], dense[0], "generator output")
    scale = max(np.abs(g).max() for g in dense[1])
    for (name, _), a, b in zip([(n, p) for n, p in netG.named_parameters() if not p.is_stop_grad()],
                               with_ids[1], dense[1]):
        # gradients reaching a bias in front of a batch norm cancel to ~0: compare on the step's scale
        err = np.abs(a - b).max()
        assert err <= 1e-3 * scale, f"{name}: max error {err:.3g} (largest gradient {scale:.3g})"


def test_mean_abs_difference_is_the_l1_mean_with_pytorchs_gradient():
    """The losses' L1 term in one kernel each way: the mean of |a - b| (float64 sums, over several of the
    kernel's blocks here), its gradient sign(a - b) * g / n with 0 where a == b (PyTorch's abs; Jittor's
    own gives +g there), none for b; the layer-by-layer ops when the fused kernels are off."""
    from jspade.models import fused_norm
    from jspade.models.reduce import mean_abs_difference
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, 3, 70, 90)).astype(np.float32)
    b = rng.standard_normal(a.shape).astype(np.float32)
    b[:, :, :, :7] = a[:, :, :, :7]  # ties, as where a ReLU zeroes both features
    expected = np.abs(a.astype(np.float64) - b).mean()
    grad_scale = np.float32(2.5)
    expected_grad = np.sign(a - b) * (grad_scale / np.float32(a.size))
    was = fused_norm.enabled()
    for fused in (True, False):
        fused_norm.set_enabled(fused)
        try:
            av, bv = jt.array(a), jt.array(b)
            loss = mean_abs_difference(av, bv)
            assert loss.shape == [1] or tuple(loss.shape) == (1,)
            assert abs(loss.item() - expected) <= 1e-6 * expected, fused
            ga, gb = jt.grad(loss * float(grad_scale), [av, bv])
            if fused:
                np.testing.assert_array_equal(ga.numpy(), expected_grad)
            else:  # Jittor's abs: +g at the ties
                np.testing.assert_allclose(ga.numpy()[:, :, :, 7:], expected_grad[:, :, :, 7:], rtol=1e-5)
            assert float(np.abs(gb.numpy()).max()) == 0.0
        finally:
            fused_norm.set_enabled(was)
