"""PatchGAN discriminators at several scales (pix2pixHD, as used by SPADE)."""
from jittor import nn

from jspade.models.base import BaseNetwork
from jspade.models.normalization import NormConv, nonspade_norm_conv
from jspade.models.pooling import avg_pool3x3_exclude_pad

SLOPE = 0.2  # of every leaky ReLU here


class NLayerDiscriminator(BaseNetwork):
    """Returns every intermediate feature map (for the feature-matching loss); the last is the prediction."""

    def __init__(self, opt):
        kw, padw = 4, 2
        nf = opt.ndf
        input_nc = opt.semantic_nc + opt.output_nc
        self.n_layers = opt.n_layers_D + 1
        self.model0 = nn.Sequential(nn.Conv2d(input_nc, nf, kw, stride=2, padding=padw), nn.LeakyReLU(SLOPE))
        for n in range(1, opt.n_layers_D):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == opt.n_layers_D - 1 else 2
            conv = nonspade_norm_conv(opt.norm_D, nf_prev, nf, kw, stride=stride, padding=padw)
            setattr(self, f"model{n}", nn.Sequential(conv, nn.LeakyReLU(SLOPE)))
        setattr(self, f"model{opt.n_layers_D}", nn.Sequential(nn.Conv2d(nf, 1, kw, stride=1, padding=padw)))

    def execute(self, x):
        features = []
        for n in range(self.n_layers):
            layer = getattr(self, f"model{n}")
            # [conv + norm, leaky ReLU]: the activation in the norm's pass
            x = layer[0](x, slope=SLOPE) if isinstance(layer[0], NormConv) else layer(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(BaseNetwork):
    def __init__(self, opt):
        self.num_D = opt.num_D
        for i in range(opt.num_D):
            setattr(self, f"discriminator_{i}", NLayerDiscriminator(opt))

    def execute(self, x):
        """A list (one per scale) of lists of feature maps; scale i sees x downsampled i times."""
        results = []
        for i in range(self.num_D):
            results.append(getattr(self, f"discriminator_{i}")(x))
            if i + 1 < self.num_D:
                x = avg_pool3x3_exclude_pad(x, 2)
        return results
