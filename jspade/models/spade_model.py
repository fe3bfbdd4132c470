"""The SPADE model as trained: generator (SPADE's, or TSIT's with `opt.netG = 'tsit'`), multiscale
discriminator, optional encoder, VGG, and the generator/discriminator objectives in the original
`Pix2PixModel`'s order (TSIT's SIS objective is the same)."""
import numpy as np

from jspade.runtime import jt

from jspade.models import losses
from jspade.checkpoint import CheckpointError, load_state_strict
from jspade.errors import ConfigError, UnsupportedRequest
from jspade.models.clip_modulation import fill_new_clip_keys
from jspade.models.discriminator import MultiscaleDiscriminator
from jspade.models.encoder import ConvEncoder, reparameterize
from jspade.models.generator import SPADEGenerator, check_spade_size
from jspade.models.tsit import TSITGenerator, check_tsit_size
from jspade.models.vgg import VGG19


def check_output_size(crop_size, aspect_ratio, num_upsampling_layers, netG="spade"):
    """Refuse, with the reason, a size the chosen generator cannot produce for the data."""
    if netG == "spade":
        check_spade_size(crop_size, aspect_ratio, num_upsampling_layers)
    elif netG == "tsit":
        check_tsit_size(crop_size, aspect_ratio, num_upsampling_layers)
    else:
        raise ConfigError(f"netG {netG!r} is not recognized (spade | tsit)")


def build_generator(opt):
    clip_dim = getattr(opt, "clip_dim", 0)
    if not isinstance(clip_dim, int) or isinstance(clip_dim, bool) or clip_dim < 0:
        raise ConfigError(f"model.clip_dim must be a whole number >= 0 (0: no CLIP; 512 for ViT-B/32), "
                          f"got {clip_dim!r}")
    if clip_dim and opt.netG != "spade":
        raise ConfigError(f"model.clip_dim {clip_dim} needs netG 'spade': CLIP modulation is built into SPADE's "
                          f"layers, not {opt.netG!r}'s")
    if opt.netG == "spade":
        return SPADEGenerator(opt)
    if opt.netG == "tsit":
        return TSITGenerator(opt)
    raise ConfigError(f"netG {opt.netG!r} is not recognized (spade | tsit)")


class SPADEModel:
    """Holds netG, netD, netE (VAE mode) and the VGG. Not a Module: each network is saved and
    optimised on its own, like the original's checkpoints (`latest_net_G.pth`, ...)."""

    def __init__(self, opt, with_discriminator=True, with_vgg=None):
        self.opt = opt
        self.netG = build_generator(opt).init_weights(opt.init_type, opt.init_variance)
        self.netD = MultiscaleDiscriminator(opt).init_weights(opt.init_type, opt.init_variance) \
            if with_discriminator else None
        self.netE = ConvEncoder(opt).init_weights(opt.init_type, opt.init_variance) if opt.use_vae else None
        if with_vgg is None:
            with_vgg = with_discriminator and opt.use_vgg
        self.vgg = VGG19() if with_vgg else None
        self.diffaugment = None  # a jspade.train.diffaugment.DiffAugment for D's inputs (per phase)
        self.style_bank = None  # a CLIP model's jspade.style_bank.StyleBank, once built or loaded

    # --- what a style can reach: the one place that answers it -------------------------------------
    @property
    def has_encoder(self):
        """Whether a photo's style code comes through the VAE encoder (use_vae)."""
        return self.netE is not None

    @property
    def has_style_stream(self):
        """Whether the generator takes the reference photo itself (TSIT with its style stream)."""
        return bool(getattr(self.netG, "has_style_stream", False))

    @property
    def takes_style_photos(self):
        """Whether a reference photo changes the output (encoder or style stream; CLIP photos go
        through CLIP first, see uses_clip)."""
        return self.has_encoder or self.has_style_stream

    def require_encoder(self):
        if not self.has_encoder:
            raise UnsupportedRequest("this model has no style encoder (it was trained without use_vae): "
                                     "style images cannot be used")

    def require_style_photos(self):
        if not self.takes_style_photos:
            raise UnsupportedRequest("this model has no style encoder (it was trained without use_vae) and no "
                                     "TSIT style stream: style images cannot be used")

    @property
    def uses_clip(self):
        """Whether the generator is CLIP-modulated (model.clip_dim > 0) and takes `clip` embeddings."""
        return bool(getattr(self.netG, "uses_clip", False))

    def set_style_bank(self, bank):
        """Attach a StyleBank; its mean becomes the generator's "no style" embedding (netG.clip_mean)."""
        if not self.uses_clip:
            raise UnsupportedRequest("a style bank needs a CLIP model (model.clip_dim > 0)")
        if bank.dim != self.netG.clip_dim:
            raise UnsupportedRequest(f"the style bank holds {bank.dim}-d embeddings; the model takes "
                                     f"{self.netG.clip_dim}-d (model.clip_dim)")
        self.style_bank = bank
        self.netG.clip_mean.update(jt.array(bank.mean.astype(np.float32)))
        self.netG.clip_mean.sync()

    def clip_embedding(self, style=None):
        """The CLIP embedding [clip_dim] (float32) a style choice stands for: None or "mean" -> the
        training set's mean ("no style": the bank's, else the generator's clip_mean); an int K -> the
        style bank's centre K; an array -> itself (e.g. a photo's embedding, or project_text's)."""
        if not self.uses_clip:
            raise UnsupportedRequest("this model has no CLIP modulation (model.clip_dim 0): it takes no CLIP style")
        dim = self.netG.clip_dim
        if style is None or (isinstance(style, str) and style == "mean"):
            return (self.style_bank.mean if self.style_bank is not None else self.netG.clip_mean.numpy()).astype(np.float32)
        if isinstance(style, (int, np.integer)) and not isinstance(style, bool):
            if self.style_bank is None:
                raise UnsupportedRequest("a style centre needs the checkpoint's style bank, and this model has "
                                         "none")
            return self.style_bank.centre(int(style))
        embedding = np.asarray(style, dtype=np.float32)
        if embedding.shape != (dim,):
            raise UnsupportedRequest(f"a CLIP embedding of shape {embedding.shape}; the model takes ({dim},) "
                                     "(model.clip_dim)")
        if not np.all(np.isfinite(embedding)) or not np.any(embedding):
            raise UnsupportedRequest("a CLIP embedding must be finite and not all zero")
        return embedding

    def networks(self):
        nets = {"G": self.netG, "D": self.netD, "E": self.netE}
        return {k: v for k, v in nets.items() if v is not None}

    def train(self):
        for net in self.networks().values():
            net.train()
        if self.vgg is not None:
            self.vgg.eval()  # no batch norm inside; eval() keeps its weights frozen

    def eval(self):
        for net in self.networks().values():
            net.eval()

    # --- the pieces of Pix2PixModel ---
    def encode_z(self, real_image, eps=None):
        mu, logvar = self.netE(real_image)
        return reparameterize(mu, logvar, eps), mu, logvar

    def generate_fake(self, semantics, real_image=None, z=None, eps=None, compute_kld=False, clip=None):
        """(fake, kld, z). In VAE mode z comes from `real_image` through the encoder unless given."""
        kld = None
        if self.opt.use_vae and z is None and real_image is not None:
            z, mu, logvar = self.encode_z(real_image, eps)
            if compute_kld:
                kld = losses.kld_loss(mu, logvar) * self.opt.lambda_kld
        return self.generate(semantics, z=z, style=real_image, clip=clip), kld, z

    def generate(self, semantics, z=None, style=None, clip=None):
        """G on the semantics; `style` (a reference photo) reaches only a generator with a style stream,
        `clip` (CLIP embeddings [N, D] or one [D]) only a CLIP model (None there: its clip_mean)."""
        if self.has_style_stream:
            return self.netG(semantics, z=z, style=style)
        if self.uses_clip:
            return self.netG(semantics, z=z, clip=clip)
        if clip is not None:
            raise UnsupportedRequest("this model has no CLIP modulation (model.clip_dim 0): it takes no CLIP embedding")
        return self.netG(semantics, z=z)

    def discriminate(self, semantics, fake_image, real_image):
        """D on fake and real in one batch (so that batch-norm statistics cover both)."""
        fake_concat = jt.concat([semantics, fake_image], dim=1)
        real_concat = jt.concat([semantics, real_image], dim=1)
        if self.diffaugment is not None:
            fake_concat, real_concat = self.diffaugment(fake_concat, real_concat)
        out = self.netD(jt.concat([fake_concat, real_concat], dim=0))
        n = fake_image.shape[0]
        pred_fake = [[f[:n] for f in scale] for scale in out]
        pred_real = [[f[n:] for f in scale] for scale in out]
        return pred_fake, pred_real

    def generator_losses(self, semantics, real_image, eps=None, clip=None):
        """(losses dict, fake, z): z is the latent the fake came from (None without VAE). `eps` fixes
        the VAE noise (tests); random otherwise. `clip`: the real images' CLIP embeddings (CLIP model)."""
        opt = self.opt
        g_losses = {}
        if opt.use_vgg:
            self.vgg.keep_weights(real_image.shape)  # before this step's activations (vgg.py says why)
        fake, kld, z = self.generate_fake(semantics, real_image, eps=eps, compute_kld=opt.use_vae, clip=clip)
        if kld is not None:
            g_losses["KLD"] = kld
        pred_fake, pred_real = self.discriminate(semantics, fake, real_image)
        g_losses["GAN"] = losses.gan_loss(pred_fake, True, for_discriminator=False, gan_mode=opt.gan_mode)
        if not opt.no_ganFeat_loss:
            g_losses["GAN_Feat"] = losses.feature_matching_loss(pred_fake, pred_real, opt.lambda_feat)
        if opt.use_vgg:
            g_losses["VGG"] = losses.vgg_loss(self.vgg, fake, real_image) * opt.lambda_vgg
        return g_losses, fake, z

    def discriminator_losses(self, semantics, real_image, z=None, eps=None, fake=None, clip=None):
        """The D objective on a fresh fake made without gradient (the original regenerates it).
        `fake`: use this one instead (the generator step's; `train.reuse_fake`): saves a generator
        forward, but D then sees the generator from before its update, and the generator's batch-norm
        running statistics and spectral-norm u/v advance once per iteration instead of twice."""
        if fake is None:
            with jt.no_grad():
                fake, _, _ = self.generate_fake(semantics, real_image, z=z, eps=eps, clip=clip)
        fake = fake.detach()
        pred_fake, pred_real = self.discriminate(semantics, fake, real_image)
        return {
            "D_Fake": losses.gan_loss(pred_fake, False, for_discriminator=True, gan_mode=self.opt.gan_mode),
            "D_real": losses.gan_loss(pred_real, True, for_discriminator=True, gan_mode=self.opt.gan_mode),
        }


def load_for_fine_tuning(model, networks, source="checkpoint", names=("G", "D", "E")):
    """Load `networks` ({"G": state, ...}, a checkpoint payload's "networks") into `model` to train on
    from, as strictly as any load except that a plain SPADE's weights may go into a CLIP model: the
    CLIP keys they lack keep the model's own start (zero heads, so it computes what the plain one
    did). Any other missing, unexpected or mis-shaped key is refused. Returns the CLIP keys filled."""
    filled = []
    for name, net in model.networks().items():
        if name not in names:
            continue
        if name not in networks:
            raise CheckpointError(f"{source} holds no weights for net{name}")
        state, new = fill_new_clip_keys(net, networks[name])
        load_state_strict(net, state, source=f"{source} [{name}]")
        filled += [f"{name}.{k}" for k in new]
    return filled
