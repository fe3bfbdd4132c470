"""VGG19 feature slices for the perceptual loss (relu1_1 ... relu5_1, torchvision layer indices)."""
from pathlib import Path

import numpy as np

from jspade.models import winograd
from jspade.models.pooling import MaxPool2x2
from jspade.runtime import jt
from jspade.safe_load import CheckpointError, safe_load
from jittor import nn

# torchvision's `vgg19().features` up to relu5_1: conv indices and where each slice ends.
_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512]
SLICE_ENDS = (2, 7, 12, 21, 30)  # features[0:2] -> relu1_1, [2:7] -> relu2_1, ...
PAIRED_SLICES = 2  # the last ones (conv3_2 on), run on the fake and the real image as one batch (features_of_pair)
# The 512 x 512 convolutions (conv4_2 .. conv5_1) keep their weights as oneDNN reads them (transformed, for
# Winograd) in training too: the weights never train, and transforming them on every call is the costliest
# part of these layers' forwards. Narrower layers gained 0-3 ms of a TSIT 256x128 step for 50 MB more.
KEPT_FROM_WEIGHTS = 512 * 512  # in x out channels


class VGG19(nn.Module):
    """Features at relu1_1..relu5_1. The input is used as given (SPADE feeds [-1, 1] images with no
    ImageNet normalisation). Weights never train (all stop-grad), so the widest convolutions keep their
    weights in the form oneDNN reads (`winograd.Conv2d(frozen=True)`, KEPT_FROM_WEIGHTS): Winograd's
    transformed weights, which a training forward would otherwise compute on every call (up to 151 MB;
    docs/performance.md)."""

    def __init__(self):
        layers, c = [], 3
        for v in _VGG19_CFG:
            if v == "M":
                layers.append(MaxPool2x2())
            else:
                layers += [winograd.Conv2d(c, v, 3, padding=1, frozen=c * v >= KEPT_FROM_WEIGHTS), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers[: SLICE_ENDS[-1]])
        self.pretrained = False
        for p in self.parameters():
            p.stop_grad()
        # Jittor draws random numbers when an op runs, not when it is created: materialise the
        # random weights now, so they depend only on the seed set before construction.
        jt.sync(self.parameters())

    def execute(self, x):
        return self._slices(x, 0, len(SLICE_ENDS))

    def features_of_pair(self, fake, real):
        """(self(fake), self(real)) with real's features constants, as the perceptual loss needs them.
        The last PAIRED_SLICES slices (conv3_2 .. conv5_1, the widest layers on the smallest maps) run on
        both images as one batch, their input gradients computed for the fake images only: one Winograd
        weight transform per layer instead of two, and more tiles per matrix product. The loss's forward
        and backward: TSIT 256x128 -14 ms (of 200), SPADE ngf 16 128x96 batch 4 -12 ms, ngf 64 256x192
        -19 ms (docs/performance.md). Earlier slices, on larger maps, run apart (no gain there)."""
        n = fake.shape[0]
        apart = len(SLICE_ENDS) - PAIRED_SLICES
        with jt.no_grad():
            real_feats = self._slices(real.detach(), 0, apart)
        fake_feats = self._slices(fake, 0, apart)
        x = jt.concat([fake_feats[-1], real_feats[-1].detach()], 0)
        for k in range(apart, len(SLICE_ENDS)):
            for i in range(SLICE_ENDS[k - 1], SLICE_ENDS[k]):
                layer = self.features[i]
                x = layer(x, varying=n) if isinstance(layer, winograd.Conv2d) else layer(x)
            fake_feats.append(x[:n])
            real_feats.append(x[n:].detach())
        return fake_feats, real_feats

    def keep_weights(self, image_shape):
        """Make what the frozen layers keep for features_of_pair on images of `image_shape` now. Made in
        the middle of a training step, among its activations, they raised a TSIT 512x384 process's peak
        memory by 240 MB for 151 MB of weights; made before the step's graph runs, by their own size."""
        n, c, h, w = image_shape
        first_paired = SLICE_ENDS[len(SLICE_ENDS) - PAIRED_SLICES - 1]
        for i, layer in enumerate(self.features):
            if isinstance(layer, MaxPool2x2):
                h, w = h // 2, w // 2
            elif isinstance(layer, winograd.Conv2d):
                if layer.frozen:
                    layer.weight_for_shape((2 * n if i >= first_paired else n, c, h, w))
                c = layer.out_channels

    def _slices(self, x, first, last):
        out = []
        for k in range(first, last):
            for i in range(SLICE_ENDS[k - 1] if k else 0, SLICE_ENDS[k]):
                x = self.features[i](x)
            out.append(x)
        return out

    def load_weights(self, path):
        """Load ImageNet weights from torchvision's `vgg19-*.pth` or Jittor's `vgg19.pkl`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"VGG19 weights not found at {path}")
        state = safe_load(path)  # torchvision .pth or Jittor .pkl; a pickle that would run code is refused
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} is not a VGG19 state dict")
        wanted = {k: v for k, v in self.state_dict().items()}
        missing = []
        for name, var in wanted.items():
            src = state.get(name)
            if src is None:
                missing.append(name)
                continue
            arr = np.asarray(src, dtype=np.float32)
            if tuple(arr.shape) != tuple(var.shape):
                raise CheckpointError(f"{path}: {name} has shape {arr.shape}, expected {tuple(var.shape)}")
            var.update(jt.array(arr))
        if missing:
            raise CheckpointError(f"{path} is not a VGG19 state dict: missing {', '.join(missing[:6])}"
                                  + (" ..." if len(missing) > 6 else ""))
        for p in self.parameters():
            p.stop_grad()
        self.pretrained = True
        return self
