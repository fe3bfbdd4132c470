"""Rewrites that do less work than the original but compute the same thing, each compared with the
straightforward form it replaces; and the option that does change the arithmetic (reuse_fake)."""
import numpy as np

from jspade import losses
from jspade.config import ModelConfig
from jspade.data.semantics import make_semantics
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
