"""DiffAugment: the discriminator's fake and real inputs of a pair get the same transform, each
transform does what it says, and gradients reach the generator through it."""
import numpy as np
import pytest

from jspade.config import ModelConfig
from jspade.models.spade_model import SPADEModel
from jspade.runtime import jt
from jspade.train.diffaugment import DiffAugment, parse_policy, shift_zero_filled


def test_both_discriminator_inputs_get_the_same_transform():
    opt = ModelConfig(label_nc=5, crop_size=32, aspect_ratio=1.0, ngf=8, ndf=8, num_D=1, n_layers_D=2,
                      use_vae=False, no_vgg_loss=True)
    jt.set_global_seed(0)
    model = SPADEModel(opt)
    model.diffaugment = DiffAugment("translation,cutout,color")
    seen = []
    model.netD.execute = lambda x: seen.append(x.numpy()) or [[x]]
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (3, 1, 32, 32))
    sem = jt.array((label == np.arange(5).reshape(1, 5, 1, 1)).astype(np.float32))
    image = jt.array(rng.uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32))
    model.discriminate(sem, image, image)  # fake == real: identical transforms give identical halves
    x = seen[0]
    np.testing.assert_array_equal(x[:3], x[3:])
    plain = np.concatenate([sem.numpy(), image.numpy()], axis=1)
    assert np.abs(x[:3] - plain).max() > 0.1  # and it did transform them
    # the pairs of a batch get different parameters
    assert not np.array_equal(x[0] - plain[0], x[1] - plain[1])


def test_translation_and_cutout_move_labels_and_image_together():
    aug = DiffAugment("translation,cutout")
    x = np.arange(2 * 4 * 16 * 16, dtype=np.float32).reshape(2, 4, 16, 16) + 1
    params = {"shift": np.array([[2, -3], [-1, 0]]), "cutout": np.array([[-2, 5], [10, 12]]), "cutout_size": (8, 8)}
    out = aug.apply(jt.array(x), params).numpy()
    expected = np.zeros_like(x)
    expected[0, :, 2:, :13] = x[0, :, :14, 3:]
    expected[1, :, :15, :] = x[1, :, 1:, :]
    expected[0, :, 0:6, 5:13] = 0
    expected[1, :, 10:16, 12:16] = 0
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(shift_zero_filled(jt.array(x), 0, 0).numpy(), x)


def test_colour_changes_only_the_image_channels_and_passes_gradients():
    aug = DiffAugment("color", image_channels=3)
    rng = np.random.default_rng(1)
    x = jt.array(rng.uniform(-1, 1, (2, 5, 8, 8)).astype(np.float32))
    params = {"brightness": np.array([0.3, -0.2]), "saturation": np.array([1.5, 0.2]),
              "contrast": np.array([0.7, 1.3])}
    out = aug.apply(x, params)
    xn, on = x.numpy(), out.numpy()
    np.testing.assert_array_equal(on[:, :2], xn[:, :2])
    img = xn[:, 2:] + params["brightness"].reshape(2, 1, 1, 1)
    m = img.mean(axis=1, keepdims=True)
    img = (img - m) * params["saturation"].reshape(2, 1, 1, 1) + m
    m = img.mean(axis=(1, 2, 3), keepdims=True)
    img = (img - m) * params["contrast"].reshape(2, 1, 1, 1) + m
    np.testing.assert_allclose(on[:, 2:], img, atol=1e-5)
    grad = jt.grad((out * out).sum(), x).numpy()
    assert np.abs(grad[:, 2:]).max() > 0


def test_policy_names_are_checked():
    assert parse_policy("cutout, color") == ("color", "cutout")
    assert parse_policy("") == ()
    with pytest.raises(ValueError, match="unknown DiffAugment transform.*'flip'"):
        parse_policy("translation,flip")
