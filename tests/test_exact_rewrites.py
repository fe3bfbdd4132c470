"""Rewrites that do less work than the original's arithmetic but compute the same thing: each is
compared, forward and backward, with the straightforward form it replaces."""
import numpy as np
import pytest

from jspade import losses
from jspade.config import ModelConfig
from jspade.data.semantics import make_semantics
from jspade.models.base import trainable_parameters
from jspade.models.generator import SPADEGenerator
from jspade.models.normalization import SPADE, onehot_conv2d, onehot_labels
from jspade.models.spade_model import SPADEModel
from jspade.runtime import jt
from jittor import nn


def labels_and_segmap(n=2, classes=5, h=7, w=9, seed=0, with_edges=False):
    rng = np.random.default_rng(seed)
    label = jt.array(rng.integers(0, classes, (n, 1, h, w)).astype(np.int32))
    instance = jt.array(rng.integers(0, 3, (n, 1, h, w)).astype(np.int32)) if with_edges else None
    return make_semantics(label, classes, instance)


def assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    err = np.abs(actual - expected).max()
    # the same non-zero products, summed in another order: float32 rounding only
    assert err <= 1e-5 * max(np.abs(expected).max(), 1.0), f"{what}: max error {err:.3g}"


@pytest.mark.parametrize("with_edges,ks", [(False, 3), (True, 3), (False, 5)])
def test_onehot_conv_equals_dense_conv_forward_and_backward(with_edges, ks):
    classes = 5
    seg = labels_and_segmap(classes=classes, with_edges=with_edges)
    rng = np.random.default_rng(1)
    weight = jt.array(rng.standard_normal((6, seg.shape[1], ks, ks)).astype(np.float32))
    bias = jt.array(rng.standard_normal(6).astype(np.float32))
    probe = jt.array(rng.standard_normal((2, 6, 7, 9)).astype(np.float32))
    pad = ks // 2

    dense = nn.conv2d(seg, weight, bias, 1, pad)
    labels = onehot_labels(seg, classes)
    assert labels is not None and labels.ids.shape == (2, 1, 7, 9)
    rest = seg[:, classes:] if with_edges else None
    gathered = onehot_conv2d(labels.ids, rest, weight, bias, (pad, pad))
    assert_close(gathered.numpy(), dense.numpy(), "forward")
    # backward: the weight gradient of the gather is a scatter-add of the output gradient
    g_dense = jt.grad((dense * probe).sum(), [weight, bias])
    g_gather = jt.grad((gathered * probe).sum(), [weight, bias])
    for name, a, b in zip(("weight", "bias"), g_gather, g_dense):
        assert_close(a.numpy(), b.numpy(), f"d/d{name}")
    # a border pixel reads zero padding: its gradient contribution must not land on a real class
    assert np.abs(g_dense[0].numpy()).max() > 0


def test_onehot_labels_only_for_one_hot_maps():
    seg = labels_and_segmap(classes=4)
    labels = onehot_labels(seg, 4)
    np.testing.assert_array_equal(labels.ids.numpy()[:, 0], seg.numpy().argmax(1))
    soft = seg * 0.5 + 0.125  # rows still sum to 1 but are not one-hot
    assert onehot_labels(soft, 4) is None
    empty = seg * 0  # an all-zero pixel is not one-hot either
    assert onehot_labels(empty, 4) is None
    # the instance-edge channel after the classes is not part of the check
    assert onehot_labels(labels_and_segmap(classes=4, with_edges=True), 4) is not None


@pytest.mark.parametrize("norm", ["spadesyncbatch3x3", "spadeinstance5x5"])
def test_spade_with_labels_equals_dense(norm):
    jt.set_global_seed(0, different_seed_for_mpi=False)
    classes = 5
    seg = labels_and_segmap(n=2, classes=classes, h=4, w=6, with_edges=True)
    spade = SPADE(norm, 8, seg.shape[1])
    spade.train()
    x = jt.array(np.random.default_rng(2).standard_normal((2, 8, 8, 12)).astype(np.float32))
    params = trainable_parameters(spade)
    probe = jt.array(np.random.default_rng(3).standard_normal((2, 8, 8, 12)).astype(np.float32))
    outs, grads = [], []
    for labels in (None, onehot_labels(seg, classes)):
        out = spade(x, seg, labels)
        outs.append(out.numpy())
        grads.append([g.numpy() for g in jt.grad((out * probe).sum(), params + [x])])
    assert_close(outs[1], outs[0], "SPADE forward")
    for i, (a, b) in enumerate(zip(grads[1], grads[0])):
        assert_close(a, b, f"SPADE gradient {i}")


def test_generator_gather_equals_dense():
    opt = ModelConfig(label_nc=6, ngf=4, crop_size=64, aspect_ratio=4 / 3, use_vae=False)
    jt.set_global_seed(0, different_seed_for_mpi=False)
    netG = SPADEGenerator(opt).init_weights("xavier", 0.02)
    netG.train()
    seg = labels_and_segmap(n=1, classes=6, h=48, w=64)
    params = trainable_parameters(netG)
    results = []
    for gather in (False, True):
        netG.gather_onehot = gather
        # the same batch-norm state for both runs
        state = {k: v.numpy().copy() for k, v in netG.state_dict().items()}
        fake = netG(seg)
        results.append((fake.numpy(), [g.numpy() for g in jt.grad(fake.sum(), params)]))
        for k, v in netG.state_dict().items():
            v.update(jt.array(state[k]))
    assert_close(results[1][0], results[0][0], "generator forward")
    for i, (a, b) in enumerate(zip(results[1][1], results[0][1])):
        assert_close(a, b, f"generator gradient {i}")


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
    opt = ModelConfig(label_nc=4, ngf=4, ndf=4, crop_size=64, use_vae=False, no_vgg_loss=True)
    jt.set_global_seed(0, different_seed_for_mpi=False)
    model = SPADEModel(opt)
    model.train()
    seg = labels_and_segmap(n=1, classes=4, h=48, w=64)
    real = jt.array(np.random.default_rng(5).uniform(-1, 1, (1, 3, 48, 64)).astype(np.float32))
    given = jt.array(np.random.default_rng(6).uniform(-1, 1, (1, 3, 48, 64)).astype(np.float32))
    reused = model.discriminator_losses(seg, real, fake=given)
    pred_fake, pred_real = model.discriminate(seg, given, real)
    expected = losses.gan_loss(pred_fake, False, for_discriminator=True)
    assert_close(reused["D_Fake"].numpy(), expected.numpy(), "D_Fake on the given fake")
    fresh = model.discriminator_losses(seg, real)  # the default renders its own fake
    assert abs(float(fresh["D_Fake"].item()) - float(expected.item())) > 1e-6
