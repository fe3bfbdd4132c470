"""SPADE's objectives: multiscale GAN loss (hinge by default), discriminator feature matching,
VGG perceptual loss and the VAE's KL divergence, with the original's weighting."""
from jspade.runtime import jt
from jspade.models.reduce import mean, mean_abs_difference

VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def hinge_d_loss(pred, target_is_real):
    """Discriminator hinge: mean(relu(1 - D(real))) or mean(relu(1 + D(fake)))."""
    margin = 1 - pred if target_is_real else 1 + pred
    return mean(jt.nn.relu(margin))


def hinge_g_loss(pred):
    return -mean(pred)


def _single_scale_loss(pred, target_is_real, for_discriminator, gan_mode):
    if gan_mode == "hinge":
        if for_discriminator:
            return hinge_d_loss(pred, target_is_real)
        assert target_is_real, "the generator's hinge loss must aim for real"
        return hinge_g_loss(pred)
    if gan_mode == "original":  # binary cross-entropy on logits
        target = 1.0 if target_is_real else 0.0
        return mean(jt.maximum(pred, 0) - pred * target + jt.log(1 + jt.exp(-jt.abs(pred))))
    if gan_mode == "ls":
        target = 1.0 if target_is_real else 0.0
        return mean((pred - target) ** 2)
    if gan_mode == "w":
        return -mean(pred) if target_is_real else mean(pred)
    raise ValueError(f"unexpected gan_mode {gan_mode!r}")


def gan_loss(preds, target_is_real, for_discriminator=True, gan_mode="hinge"):
    """Average over discriminator scales of the loss on each scale's final prediction.
    `preds`: the multiscale discriminator's output (a list per scale of feature lists)."""
    total = 0
    for scale in preds:
        pred = scale[-1] if isinstance(scale, (list, tuple)) else scale
        total = total + _single_scale_loss(pred, target_is_real, for_discriminator, gan_mode)
    return total / len(preds)


def feature_matching_loss(pred_fake, pred_real, lambda_feat=10.0):
    """L1 between the discriminator's intermediate features on fake and (detached) real inputs,
    every layer but the prediction, weighted lambda_feat / num_D."""
    num_D = len(pred_fake)
    total = 0
    for fake_feats, real_feats in zip(pred_fake, pred_real):
        for f, r in zip(fake_feats[:-1], real_feats[:-1]):
            total = total + mean_abs_difference(f, r) * (lambda_feat / num_D)
    return total


def vgg_loss(vgg, fake, real):
    """Perceptual loss: weighted L1 between VGG19 features (relu1_1..relu5_1) of fake and real."""
    fake_feats, real_feats = vgg.features_of_pair(fake, real)
    total = 0
    for w, f, r in zip(VGG_LAYER_WEIGHTS, fake_feats, real_feats):
        total = total + w * mean_abs_difference(f, r)
    return total


def kld_loss(mu, logvar):
    """KL(N(mu, sigma) || N(0, I)), summed over batch and dimensions (as the original)."""
    return -0.5 * (1 + logvar - mu * mu - jt.exp(logvar)).sum()
