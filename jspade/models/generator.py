"""The SPADE generator (Park et al., Fig. 4 and Appendix A)."""
from jspade.runtime import jt
from jittor import nn

from jspade.errors import ConfigError
from jspade.models import winograd
from jspade.models.base import BaseNetwork
from jspade.models.clip_modulation import STYLE_WIDTH, ClipHead, ClipMapping, reset_clip_parameters
from jspade.models.normalization import SPADE, SegmentationMap, conv2d
from jspade.models.resize import resize_nearest, upsample2x


def residual_convs(block, fin, fmiddle, fout, norm):
    """A residual block's convolutions, with the original's names: conv_0 (fin -> fmiddle), conv_1
    (fmiddle -> fout), and the bias-free 1x1 shortcut conv_s when fin != fout. "spectral" in the norm
    option puts spectral norm on the convolutions; returns the rest, the norm layers' own option."""
    spectral = "spectral" in norm
    block.learned_shortcut = fin != fout
    block.conv_0 = conv2d(fin, fmiddle, 3, padding=1, spectral=spectral)
    block.conv_1 = conv2d(fmiddle, fout, 3, padding=1, spectral=spectral)
    if block.learned_shortcut:
        block.conv_s = conv2d(fin, fout, 1, bias=False, spectral=spectral)
    return norm.replace("spectral", "")


class ModulatedResnetBlock(nn.Module):
    """A residual block whose normalisations are modulated by a conditioning map `cond` (the
    segmentation map for SPADE, a content-stream feature for FADE); a learned 1x1 shortcut when
    fin != fout. `make_norm(config, channels)` builds one modulated norm; `config` is norm_G without
    "spectral", which instead puts spectral norm on the convolutions (as the original's)."""

    def __init__(self, fin, fmiddle, fout, norm_G, make_norm):
        config = residual_convs(self, fin, fmiddle, fout, norm_G)
        self.norm_0 = make_norm(config, fin)
        self.norm_1 = make_norm(config, fmiddle)
        if self.learned_shortcut:
            self.norm_s = make_norm(config, fin)

    def execute(self, x, cond):
        x_s = self.conv_s(self.norm_s(x, cond)) if self.learned_shortcut else x
        dx = self.conv_0(self.norm_0(x, cond, slope=0.2))  # the norm applies the leaky ReLU
        return self.conv_1(self.norm_1(dx, cond, slope=0.2), residual=x_s)  # x_s + conv_1(...)


class SPADEResnetBlock(ModulatedResnetBlock):
    """Residual block whose every normalisation is SPADE; a learned 1x1 shortcut when fin != fout.
    `style_width` > 0: every SPADE (the shortcut's too) is CLIP-modulated."""

    def __init__(self, fin, fout, norm_G, semantic_nc, style_width=0):
        super().__init__(fin, min(fin, fout), fout, norm_G,
                         lambda config, channels: SPADE(config, channels, semantic_nc, style_width))


# num_upsampling_layers -> how many times the generator doubles its latent map's size
UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}


def latent_size(crop_size, aspect_ratio, num_upsampling_layers):
    """(sw, sh): the spatial size the generator starts from."""
    num_up = UPSAMPLINGS[num_upsampling_layers]
    sw = crop_size // (2 ** num_up)
    return sw, round(sw / aspect_ratio)


def check_spade_size(crop_size, aspect_ratio, num_upsampling_layers):
    """SPADE's output must have the data's size (crop_size x round(crop_size / aspect_ratio)); with some
    sizes the original's rounding of the latent height breaks that (crop 64 at 4:3 gives 64x64 fakes for
    64x48 photos). Raise a clear error instead of a shape mismatch mid-training."""
    sw, sh = latent_size(crop_size, aspect_ratio, num_upsampling_layers)
    scale = 2 ** UPSAMPLINGS[num_upsampling_layers]
    want = (round(crop_size / aspect_ratio), crop_size)
    if (sh * scale, sw * scale) != want:
        raise ConfigError(f"crop_size {crop_size} with aspect_ratio {aspect_ratio:.4g} makes {sw * scale}x{sh * scale} "
                         f"images but the data is {want[1]}x{want[0]}: use a crop_size that is a multiple of "
                         f"{scale} whose height crop_size/aspect_ratio is one too (e.g. 128, 256, 512 at 4:3)")


def first_feature_map(generator, seg, z=None):
    """What a generator's decoder starts from (SPADE's and TSIT's alike): fc(z) as a 16ngf x sh x sw map
    in VAE mode (z ~ N(0, 1) when not given), else fc (a 3x3 convolution) of the downsampled segmentation."""
    opt = generator.opt
    if opt.use_vae:
        if z is None:
            z = jt.randn(seg.shape[0], opt.z_dim)
        return generator.fc(z).reshape(-1, 16 * opt.ngf, generator.sh, generator.sw)
    return generator.fc(resize_nearest(seg, (generator.sh, generator.sw)))


class SPADEGenerator(BaseNetwork):
    """With `opt.clip_dim` > 0, CLIP-modulated (jspade/models/clip_modulation.py): `clip_mapping` turns
    the embedding into a style vector once per forward; `clip_head_fc` scales and shifts the first
    feature map and each SPADE's `clip_head` its hidden map. `clip_mean` (a buffer, saved with the
    weights) is the embedding used when none is given: the training set's mean ("no style")."""

    def __init__(self, opt):
        self.opt = opt
        nf = opt.ngf
        self.clip_dim = int(getattr(opt, "clip_dim", 0) or 0)
        if opt.num_upsampling_layers not in UPSAMPLINGS:
            raise ValueError(f"num_upsampling_layers {opt.num_upsampling_layers!r} not recognized")
        self.sw, self.sh = latent_size(opt.crop_size, opt.aspect_ratio, opt.num_upsampling_layers)
        if self.sw < 1 or self.sh < 1:
            raise ValueError(f"crop_size {opt.crop_size} is too small for '{opt.num_upsampling_layers}' upsampling")
        if opt.use_vae:
            # z -> a 16nf x sh x sw tensor
            self.fc = nn.Linear(opt.z_dim, 16 * nf * self.sw * self.sh)
        else:
            # the downsampled segmentation map -> the first feature map
            self.fc = winograd.Conv2d(opt.semantic_nc, 16 * nf, 3, padding=1)
        style_width = STYLE_WIDTH if self.clip_dim else 0
        if self.clip_dim:
            self.clip_mapping = ClipMapping(self.clip_dim, style_width)
            self.clip_head_fc = ClipHead(style_width, 16 * nf)
            self.clip_mean = jt.zeros(self.clip_dim).stop_grad()
        block = lambda fin, fout: SPADEResnetBlock(fin, fout, opt.norm_G, opt.semantic_nc, style_width)
        self.head_0 = block(16 * nf, 16 * nf)
        self.G_middle_0 = block(16 * nf, 16 * nf)
        self.G_middle_1 = block(16 * nf, 16 * nf)
        self.up_0 = block(16 * nf, 8 * nf)
        self.up_1 = block(8 * nf, 4 * nf)
        self.up_2 = block(4 * nf, 2 * nf)
        self.up_3 = block(2 * nf, 1 * nf)
        final_nc = nf
        if opt.num_upsampling_layers == "most":
            self.up_4 = block(1 * nf, nf // 2)
            final_nc = nf // 2
        self.conv_img = winograd.Conv2d(final_nc, 3, 3, padding=1)

    def init_weights(self, init_type="xavier", gain=0.02):
        super().init_weights(init_type, gain)
        return reset_clip_parameters(self) if self.clip_dim else self

    @property
    def uses_clip(self):
        return self.clip_dim > 0

    def clip_batch(self, clip, n):
        """The CLIP embeddings [n, clip_dim] of a forward: `clip` ([n, D], or one [D] / [1, D] for the
        whole batch; a Var or an array), or clip_mean when None."""
        if clip is None:
            clip = self.clip_mean
        elif not isinstance(clip, jt.Var):
            clip = jt.array(clip)
        clip = clip.float32()
        if clip.ndim == 1:
            clip = clip.reshape(1, -1)
        if clip.ndim != 2 or clip.shape[1] != self.clip_dim or clip.shape[0] not in (1, n):
            raise ValueError(f"CLIP embeddings of shape {tuple(clip.shape)} for a batch of {n}: the generator takes "
                             f"[{n}, {self.clip_dim}] or one [{self.clip_dim}] (model.clip_dim {self.clip_dim})")
        return clip.broadcast((n, self.clip_dim)) if clip.shape[0] != n else clip

    def execute(self, seg, z=None, clip=None):
        """`clip`: CLIP image embeddings (see clip_batch) for a CLIP model; None uses clip_mean."""
        opt = self.opt
        x = first_feature_map(self, seg, z)
        style = None
        if self.clip_dim:
            style = self.clip_mapping(self.clip_batch(clip, seg.shape[0]))  # once per forward
            x = self.clip_head_fc(x, style)
        elif clip is not None:
            raise ValueError("this generator has no CLIP modulation (model.clip_dim 0): it takes no CLIP embedding")
        cond = SegmentationMap(seg, opt.num_label_ids, style)  # SPADE layers read its label ids (and style)
        x = self.head_0(x, cond)
        x = upsample2x(x)
        x = self.G_middle_0(x, cond)
        if opt.num_upsampling_layers in ("more", "most"):
            x = upsample2x(x)
        x = self.G_middle_1(x, cond)
        for up in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = up(upsample2x(x), cond)
        if opt.num_upsampling_layers == "most":
            x = self.up_4(upsample2x(x), cond)
        x = self.conv_img(nn.leaky_relu(x, 0.2))
        return jt.tanh(x)
