"""The image encoder of SPADE's VAE mode: image -> (mu, logvar) of the style code z."""
import numpy as np

from jspade.runtime import jt
from jittor import nn

from jspade.models.base import BaseNetwork
from jspade.models.normalization import NormConv, nonspade_norm_conv
from jspade.models.resize import resize_bilinear


class ConvEncoder(BaseNetwork):
    def __init__(self, opt):
        kw, pw = 3, 1
        ndf = opt.ngf
        # The original resizes every input to 256x256 and needs six stride-2 layers to reach 4x4; it
        # fails for crop_size < 256. There we resize to 128x128 and use five, reaching the same 4x4.
        self.input_size = 256 if opt.crop_size >= 256 else 128
        norm = lambda fin, fout: nonspade_norm_conv(opt.norm_E, fin, fout, kw, stride=2, padding=pw)
        self.layer1 = norm(3, ndf)
        self.layer2 = norm(ndf, ndf * 2)
        self.layer3 = norm(ndf * 2, ndf * 4)
        self.layer4 = norm(ndf * 4, ndf * 8)
        self.layer5 = norm(ndf * 8, ndf * 8)
        if self.input_size == 256:
            self.layer6 = norm(ndf * 8, ndf * 8)
        s0 = 4
        self.fc_mu = nn.Linear(ndf * 8 * s0 * s0, opt.z_dim)
        self.fc_var = nn.Linear(ndf * 8 * s0 * s0, opt.z_dim)

    def execute(self, x):
        x = resize_bilinear(x, (self.input_size, self.input_size))
        layers = [self.layer1, self.layer2, self.layer3, self.layer4, self.layer5]
        if self.input_size == 256:
            layers.append(self.layer6)
        for layer in layers:  # each followed by leaky ReLU, in the norm's pass where there is one
            x = layer(x, slope=0.2) if isinstance(layer, NormConv) else nn.leaky_relu(layer(x), 0.2)
        x = x.reshape(x.shape[0], -1)
        return self.fc_mu(x), self.fc_var(x)


def reparameterize(mu, logvar, eps=None):
    """z = mu + eps * sigma, eps ~ N(0, I) unless given."""
    std = jt.exp(0.5 * logvar)
    if eps is None:
        eps = jt.randn(std.shape)
    return eps * std + mu


def noise_for(seed, index, sample, dim):
    """The style code z of label `index`, sample `sample` when no photo gives one: a per-label,
    per-sample Gaussian, so a label's output does not depend on batch size or order."""
    return np.random.default_rng((seed, index, sample)).standard_normal(dim).astype(np.float32)
