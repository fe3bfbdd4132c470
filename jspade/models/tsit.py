"""The TSIT generator (Jiang et al., "TSIT: A Simple and Versatile Framework for Image-to-Image
Translation", ECCV 2020; original code EndlessSora/TSIT), for semantic image synthesis.

The original's parts: a content stream over the segmentation map (eight residual blocks, each input
halved by nearest interpolation) whose features modulate a SPADE-like decoder through FADE; the
latent from the VAE encoder (or the downsampled map); 'more' upsampling; state-dict names as the
original's, so its `latest_net_G.pth` loads strictly.

This project's option (`style_stream`): for SIS the original discards its style stream (`no_ss`).
Here it can be kept, over a reference photo (3 input channels), restyling the decoder by FAdaIN
before each block with strength `alpha` in [0, 1]. Without a photo the decoder runs unstyled."""
from jspade.runtime import jt
from jittor import nn

from jspade.errors import ConfigError
from jspade.models import winograd
from jspade.models.base import BaseNetwork
from jspade.models.generator import ModulatedResnetBlock, first_feature_map, residual_convs
from jspade.models.normalization import FADE, InstanceNorm2d, SegmentationMap, SyncBatchNorm, conv_of_semantics
from jspade.models.resize import upsample2x


def downsample_half(x):
    """F.interpolate(x, scale_factor=0.5), nearest: PyTorch takes source index 2 * i (it uses the
    given scale, not in/out), i.e. every other pixel from the first, for even and odd sizes alike."""
    h, w = x.shape[2] // 2, x.shape[3] // 2
    return x[:, :, 0:2 * h:2, 0:2 * w:2]


def _stream_norm(norm_type, num_features):
    if norm_type == "instance":
        return InstanceNorm2d(num_features)
    if norm_type in ("batch", "syncbatch"):
        return SyncBatchNorm(num_features, affine=True, sync=norm_type == "syncbatch")
    raise ValueError(f"norm_S {norm_type!r} is not recognized (spectralinstance | spectralbatch | "
                     "spectralsyncbatch, with or without 'spectral')")


class StreamResnetBlock(nn.Module):
    """The stream's residual block: conv -> norm -> leaky ReLU twice (fmiddle = fin); a learned
    1x1 shortcut, normalised and activated too, when fin != fout."""

    def __init__(self, fin, fout, norm_S):
        norm_type = residual_convs(self, fin, fin, fout, norm_S)
        self.norm_layer_in = _stream_norm(norm_type, fin)
        self.norm_layer_out = _stream_norm(norm_type, fout)
        if self.learned_shortcut:
            self.norm_layer_s = _stream_norm(norm_type, fout)

    def execute(self, x):
        """`x`: a feature map, or the content stream's input as a SegmentationMap (whose convolutions
        are computed from the label ids: a one-hot map's are gathers of weight columns)."""
        if isinstance(x, SegmentationMap):
            segmap, x = x, x.semantics
            conv = lambda layer: conv_of_semantics(layer, segmap)
        else:
            conv = lambda layer: layer(x)
        # each norm with the leaky ReLU after it in one pass
        x_s = self.norm_layer_s(conv(self.conv_s), slope=0.2) if self.learned_shortcut else x
        dx = self.norm_layer_in(conv(self.conv_0), slope=0.2)
        return self.norm_layer_out(self.conv_1(dx), slope=0.2, residual=x_s)  # x_s + norm(conv_1(...))


class Stream(BaseNetwork):
    """Eight StreamResnetBlocks; the input of res_1..res_7 is halved. Returns the eight features,
    finest first (nf, 2nf, 4nf, 8nf, 16nf x 4 channels)."""

    def __init__(self, input_nc, ngf, norm_S):
        widths = [input_nc, ngf, 2 * ngf, 4 * ngf, 8 * ngf, 16 * ngf, 16 * ngf, 16 * ngf, 16 * ngf]
        for i in range(8):
            setattr(self, f"res_{i}", StreamResnetBlock(widths[i], widths[i + 1], norm_S))

    def execute(self, x):
        features = []
        for i in range(8):
            x = getattr(self, f"res_{i}")(x if i == 0 else downsample_half(x))
            features.append(x)
        return features


class FADEResnetBlock(ModulatedResnetBlock):
    """SPADEResnetBlock with FADE for SPADE and fmiddle = fin (not min(fin, fout)); the conditioning
    feature has as many channels as the block's input."""

    def __init__(self, fin, fout, norm_G):
        super().__init__(fin, fin, fout, norm_G, lambda config, channels: FADE(config, channels, channels))


def check_tsit_size(crop_size, aspect_ratio, num_upsampling_layers):
    """TSIT's content stream halves its input seven times and its decoder meets the stream at every
    scale, so both sides must be multiples of 128; and only the original's 'more' layout lines up
    (its 'most' starts the decoder at half the deepest stream feature: a shape error, checked by
    running the original)."""
    if num_upsampling_layers == "most":
        raise ConfigError("TSIT cannot use num_upsampling_layers 'most': the original fails with a shape error "
                         "there (its decoder starts at half the scale of the content stream's deepest feature); "
                         "use 'more', which the original always uses")
    width, height = crop_size, round(crop_size / aspect_ratio)
    if width % 128 or height % 128 or width < 128 or height < 128:
        raise ConfigError(f"TSIT cannot make {width}x{height} images (crop_size {crop_size}, aspect_ratio "
                         f"{aspect_ratio:.4g}): its content stream halves the input seven times, so width and "
                         "height must be multiples of 128 (e.g. 512x384: crop_size 512 at 4:3; 256x128: "
                         "crop_size 256, aspect_ratio 2)")


def _mean_std(x, eps=1e-5):
    """Per-sample, per-channel mean and std over H, W (unbiased variance + eps, as the original's
    calc_mean_std; a 1-pixel map, where that variance is undefined, gets variance 0 + eps)."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    mean = flat.mean(dims=(2,), keepdims=True)
    var = ((flat - mean) ** 2).sum(dims=(2,), keepdims=True) / max(h * w - 1, 1)
    return mean.reshape(n, c, 1, 1), jt.sqrt(var + eps).reshape(n, c, 1, 1)


def fadain(content, style, alpha):
    """FAdaIN: AdaIN of a decoder feature to a style-stream feature of the same scale, blended with
    the unstyled feature by `alpha` (0: no change; 1: full restyling)."""
    c_mean, c_std = _mean_std(content)
    s_mean, s_std = _mean_std(style)
    styled = (content - c_mean) / c_std * s_std + s_mean
    return alpha * styled + (1 - alpha) * content


def fade_norm_name(norm_G):
    """TSIT's norm_G names FADE layers ('spectralfadesyncbatch3x3'); a SPADE name (the project's default
    'spectralspadesyncbatch3x3') selects the same param-free norm and kernel, so switching netG alone works."""
    return norm_G.replace("spade", "fade")


class TSITGenerator(BaseNetwork):
    def __init__(self, opt):
        self.opt = opt
        nf = opt.ngf
        # The original always uses 'more' (its option parser overrides the choice); 'most' cannot work.
        check_tsit_size(opt.crop_size, opt.aspect_ratio, opt.num_upsampling_layers)
        if not 0.0 <= opt.alpha <= 1.0:
            raise ValueError(f"alpha {opt.alpha} must be in [0, 1] (the strength of the style stream's FAdaIN)")
        self.sw = opt.crop_size // 128  # 7 upsamplings ('more' with TSIT's extra one)
        self.sh = round(self.sw / opt.aspect_ratio)
        self.content_stream = Stream(opt.semantic_nc, nf, opt.norm_S)
        if opt.style_stream:
            self.style_stream = Stream(3, nf, opt.norm_S)
        if opt.use_vae:
            self.fc = nn.Linear(opt.z_dim, 16 * nf * self.sw * self.sh)
        else:
            self.fc = winograd.Conv2d(opt.semantic_nc, 16 * nf, 3, padding=1)
        norm_G = fade_norm_name(opt.norm_G)
        self.head_0 = FADEResnetBlock(16 * nf, 16 * nf, norm_G)
        self.G_middle_0 = FADEResnetBlock(16 * nf, 16 * nf, norm_G)
        self.G_middle_1 = FADEResnetBlock(16 * nf, 16 * nf, norm_G)
        self.up_0 = FADEResnetBlock(16 * nf, 8 * nf, norm_G)
        self.up_1 = FADEResnetBlock(8 * nf, 4 * nf, norm_G)
        self.up_2 = FADEResnetBlock(4 * nf, 2 * nf, norm_G)
        self.up_3 = FADEResnetBlock(2 * nf, 1 * nf, norm_G)
        self.conv_img = winograd.Conv2d(nf, 3, 3, padding=1)

    @property
    def has_style_stream(self):
        return self.opt.style_stream

    def execute(self, seg, z=None, style=None):
        """`style`: the reference photo [B,3,H,W] in [-1, 1] for the style stream (ignored without one;
        None runs the decoder unstyled)."""
        # 3x3 convolutions by Winograd where it pays, as in SPADE's generator: on the 512x384 reference
        # archive it lands closer than the direct algorithm, whole or per stream (docs/tsit.md).
        opt = self.opt
        ft = self.content_stream(SegmentationMap(seg, opt.num_label_ids))  # its first block reads the label ids
        sft = self.style_stream(style) if opt.style_stream and style is not None else None
        x = first_feature_map(self, seg, z)

        def styled(x, level):
            return fadain(x, sft[level], opt.alpha) if sft is not None else x

        x = self.head_0(styled(x, 7), ft[7])
        x = upsample2x(x)
        x = self.G_middle_0(styled(x, 6), ft[6])
        x = upsample2x(x)
        x = self.G_middle_1(styled(x, 5), ft[5])
        for level, block in zip((4, 3, 2, 1), (self.up_0, self.up_1, self.up_2, self.up_3)):
            x = block(styled(upsample2x(x), level), ft[level])
        x = upsample2x(x)  # the extra upsampling: the finest stream feature ft[0] is not used for SIS
        x = self.conv_img(nn.leaky_relu(x, 0.2))
        return jt.tanh(x)
