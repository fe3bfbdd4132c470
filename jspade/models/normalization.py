"""Normalisation layers with the original PyTorch semantics.

- Spectral normalisation as `torch.nn.utils.spectral_norm`: the layer keeps `weight_orig`, `weight_u`,
  `weight_v`; in training mode one power iteration per forward updates u and v (no gradient), and the
  gradient flows through sigma = u^T W v with u, v held constant; in eval mode the stored u, v are used.
- Batch norm synchronised over MPI ranks (statistics of the union batch), with PyTorch's running
  statistics (momentum 0.1, *unbiased* running variance); Jittor's own BatchNorm keeps the biased one and
  computes the variance in one pass, which the reference fixtures detect.
- Instance norm, and SPADE itself (Park et al., Sec. 3): a parameter-free normalisation modulated by
  gamma/beta predicted from the segmentation map.
"""
import re

import numpy as np

from jspade.runtime import jt, release_saved
from jittor import nn

from jspade.models import fused_norm, kept_weights, winograd
from jspade.models.clip_modulation import ClipHead
from jspade.models.label_conv import label_conv, label_ids
from jspade.models.resize import resize_nearest


def l2_normalize(v, eps=1e-12):
    return v / jt.maximum(jt.sqrt((v * v).sum()), eps)


class SpectralNorm(nn.Module):
    """Shared power-iteration logic; subclasses hold `weight_orig` and apply the normalised weight."""

    n_power_iterations = 1

    def _init_uv(self):
        h = self.weight_orig.shape[0]
        w = int(np.prod(self.weight_orig.shape[1:]))
        self.weight_u = l2_normalize(jt.randn(h)).stop_grad()
        self.weight_v = l2_normalize(jt.randn(w)).stop_grad()

    def normalized_weight(self):
        w_mat = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        u, v = self.weight_u, self.weight_v
        if self.is_training():
            w_const = w_mat.detach()
            for _ in range(self.n_power_iterations):
                v = l2_normalize(jt.matmul(u.reshape(1, -1), w_const).reshape(-1))
                u = l2_normalize(jt.matmul(w_const, v.reshape(-1, 1)).reshape(-1))
            self.weight_u.update(u)
            self.weight_v.update(v)
            u, v = u.detach(), v.detach()
        sigma = (u * jt.matmul(w_mat, v.reshape(-1, 1)).reshape(-1)).sum()
        if self.is_training() and fused_norm.enabled():  # the same value, its backward in one kernel
            return fused_norm.spectral_divide(self.weight_orig, sigma.detach(), u, v)
        return self.weight_orig / sigma


class SpectralConv2d(SpectralNorm):
    """`spectral_norm(nn.Conv2d(...))` with the same state names."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        conv = winograd.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.weight_orig = conv.weight
        self.bias = conv.bias
        self.stride, self.padding = stride, padding
        self._init_uv()

    def weight_for(self, x=None):
        """W / sigma for this forward (after a power iteration in training). While rendering it is kept,
        in the layout oneDNN reads for inputs like `x` (winograd.prepare), or as it is for x None."""
        if self.is_training():  # a power iteration per forward: nothing to keep
            kept_weights.drop(self)
            return self.normalized_weight()
        sources = (self.weight_orig, self.weight_u, self.weight_v)
        if x is None:
            return kept_weights.kept(self, sources, self.normalized_weight)
        return kept_weights.kept(self, sources, lambda: winograd.prepare(
            self.normalized_weight(), x.shape, self.stride, self.padding), x.shape)

    def execute(self, x, residual=None):
        return winograd.conv2d(x, self.weight_for(x), self.bias, self.stride, self.padding, residual=residual)


def _sum_nhw(x):
    """Per-channel sum over N, H, W accumulated in float64 (PyTorch's CPU batch norm accumulates in
    double; matching it keeps our rounding close to the original's, which gradients are sensitive to)."""
    return x.float64().sum(dims=(0, 2, 3))


class _BatchNormFunction(jt.Function):
    """y = x * alpha + beta with alpha = invstd * w, beta = b - mean * alpha, and PyTorch's analytic
    backward dx = (dy - mean(dy) - (x - mean) * k) * invstd * w, k = mean(dy * (x - mean)) * invstd^2.
    `mean`/`invstd` are the batch statistics (constants here; the formula accounts for them). Under MPI
    the two backward sums are all-reduced, so every rank gets the gradient of the union batch."""

    def execute(self, x, mean, invstd, weight, bias, count, synced):
        c = x.shape[1]
        self.saved = (x, mean, invstd, weight, count, synced)
        alpha = invstd * weight
        beta = bias - mean * alpha
        return x * alpha.reshape(1, c, 1, 1) + beta.reshape(1, c, 1, 1)

    def grad(self, dy):
        x, mean, invstd, weight, count, synced = release_saved(self)
        c = x.shape[1]
        xmu = x - mean.reshape(1, c, 1, 1)
        sum_dy = _sum_nhw(dy)
        dotp = _sum_nhw(xmu * dy)
        # weight/bias gradients are this rank's share (the optimiser averages them like any other
        # parameter's); the input gradient needs the sums over the union batch.
        grad_weight, grad_bias = dotp.float32() * invstd, sum_dy.float32()
        if synced:
            sum_dy, dotp = sum_dy.mpi_all_reduce("add"), dotp.mpi_all_reduce("add")
        k = dotp.float32() * invstd * invstd / count
        grad_mean = (sum_dy / count).float32()
        dx = (dy - grad_mean.reshape(1, c, 1, 1) - xmu * k.reshape(1, c, 1, 1)) \
            * (invstd * weight).reshape(1, c, 1, 1)
        return dx, None, None, grad_weight, grad_bias, None, None


def batch_statistics(x, eps=1e-5, synced=False):
    """Per-channel batch statistics of NCHW `x` as PyTorch's CPU batch norm computes them: the mean,
    then the biased variance from the centred squares, both summed in float64 (under MPI over the
    union batch). Returns (mean, biased variance, invstd, element count per channel), no gradient."""
    c = x.shape[1]
    count = x.numel() // c
    fused = fused_norm.enabled()
    if fused and not synced:  # the same values in one kernel (the ops below cost more than the sums)
        with jt.no_grad():
            mean, var, invstd = fused_norm.statistics(x.float32(), eps)
        return mean.detach(), var.detach(), invstd.detach(), count
    with jt.no_grad():
        total = fused_norm.sums(x, False) if fused else _sum_nhw(x)
        if synced:
            total = total.mpi_all_reduce("add")
            count *= jt.world_size
        mean = (total / count).float32()
        if fused:
            var_sum = fused_norm.sums(x, False, mean)
        else:
            centered = x - mean.reshape(1, c, 1, 1)
            var_sum = _sum_nhw(centered * centered)
        if synced:
            var_sum = var_sum.mpi_all_reduce("add")
        var = var_sum.float32().float64() / count
        invstd = (1.0 / jt.sqrt(var + eps)).float32()
    return mean.detach(), var.float32().detach(), invstd.detach(), count


def batch_norm_train(x, weight=None, bias=None, eps=1e-5, synced=False):
    """Batch-statistics normalisation of NCHW `x`, as PyTorch's CPU kernel computes it.
    Returns (output, batch mean, biased variance, element count per channel)."""
    c = x.shape[1]
    mean, var, invstd, count = batch_statistics(x, eps, synced)
    weight = jt.ones(c) if weight is None else weight
    bias = jt.zeros(c) if bias is None else bias
    out = _BatchNormFunction.apply(x, mean, invstd, weight, bias, count, synced)
    return out, mean, var, count


def _plus(x, residual):
    return x if residual is None else x + residual


class SyncBatchNorm(nn.Module):
    """BatchNorm2d whose statistics are those of the batch across all MPI ranks (SPADE's
    `SynchronizedBatchNorm2d`). Running statistics as PyTorch: momentum 0.1, *unbiased* running
    variance (Jittor's own BatchNorm keeps the biased one)."""

    def __init__(self, num_features, affine=True, eps=1e-5, momentum=0.1, sync=True):
        self.num_features, self.eps, self.momentum, self.sync = num_features, eps, momentum, sync
        self.weight = jt.ones(num_features) if affine else None
        self.bias = jt.zeros(num_features) if affine else None
        self.running_mean = jt.zeros(num_features).stop_grad()
        self.running_var = jt.ones(num_features).stop_grad()

    def _update_running(self, mean, var, n):
        m = self.momentum
        self.running_mean.update(self.running_mean * (1 - m) + mean * m)
        self.running_var.update(self.running_var * (1 - m) + var * (m * n / max(n - 1, 1)))

    def statistics(self, x):
        """The `fused_norm.Statistics` this layer normalises `x` with (the batch's in training mode,
        running statistics updated; the running ones in eval mode)."""
        if self.is_training():
            synced = self.sync and jt.in_mpi
            mean, var, invstd, n = batch_statistics(x, self.eps, synced)
            self._update_running(mean, var, n)
            return fused_norm.Statistics(mean, invstd, n, synced, True, False)
        invstd = 1.0 / jt.sqrt(self.running_var + self.eps)
        return fused_norm.Statistics(self.running_mean, invstd, None, False, False, False)

    def execute(self, x, slope=None, residual=None):
        """The normalised x, then leaky ReLU with `slope` unless None (one pass, with fused_norm), then
        + `residual` where given."""
        if fused_norm.enabled():
            return fused_norm.normalize(x, self.statistics(x), self.weight, self.bias, slope, residual)
        return _plus(self._unfused(x, slope), residual)

    def _unfused(self, x, slope):
        c = self.num_features
        if self.is_training():
            out, mean, var, n = batch_norm_train(x, self.weight, self.bias, self.eps,
                                                 synced=self.sync and jt.in_mpi)
            self._update_running(mean, var, n)
        else:
            alpha = 1.0 / jt.sqrt(self.running_var + self.eps)
            if self.weight is not None:
                alpha = alpha * self.weight
            beta = -self.running_mean * alpha
            if self.bias is not None:
                beta = beta + self.bias
            out = x * alpha.reshape(1, c, 1, 1) + beta.reshape(1, c, 1, 1)
        return out if slope is None else nn.leaky_relu(out, slope)


class InstanceNorm2d(nn.Module):
    """Parameter-free instance norm (PyTorch's default InstanceNorm2d: affine=False, no running
    stats), computed as PyTorch does: batch norm over a (1, N*C, H, W) view."""

    def __init__(self, num_features, eps=1e-5):
        self.num_features, self.eps = num_features, eps

    def statistics(self, x):
        """The `fused_norm.Statistics` of each (image, channel) plane of `x`."""
        n, c, h, w = x.shape
        mean, _, invstd, count = batch_statistics(x.reshape(1, n * c, h, w), self.eps)
        return fused_norm.Statistics(mean, invstd, count, False, True, True)

    def execute(self, x, slope=None, residual=None):
        """The normalised x, then leaky ReLU with `slope` unless None (one pass, with fused_norm), then
        + `residual` where given."""
        if fused_norm.enabled():
            if jt.flags.no_grad and (residual is None or tuple(residual.shape) == tuple(x.shape)):
                return fused_norm.instance_norm_forward(x, self.eps, slope, residual)  # one kernel
            return fused_norm.normalize(x, self.statistics(x), slope=slope, residual=residual)
        n, c, h, w = x.shape
        out, _, _, _ = batch_norm_train(x.reshape(1, n * c, h, w), eps=self.eps)
        out = out.reshape(n, c, h, w)
        return _plus(out if slope is None else nn.leaky_relu(out, slope), residual)


def conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, spectral=False):
    cls = SpectralConv2d if spectral else winograd.Conv2d
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)


def nonspade_norm_conv(norm_type, in_channels, out_channels, kernel_size, stride=1, padding=0):
    """A convolution followed by the normalisation `norm_type` names ('spectralinstance',
    'spectralsyncbatch', 'batch', 'none', ...), as the original `get_nonspade_norm_layer` builds it:
    the convolution loses its bias when a norm follows."""
    spectral = norm_type.startswith("spectral")
    sub = norm_type[len("spectral"):] if spectral else norm_type
    if sub in ("", "none"):
        return conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=True, spectral=spectral)
    conv = conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False, spectral=spectral)
    if sub == "instance":
        norm = InstanceNorm2d(out_channels)
    elif sub in ("batch", "sync_batch", "syncbatch"):
        norm = SyncBatchNorm(out_channels, affine=True, sync=sub != "batch")
    else:
        raise ValueError(f"normalization layer {sub!r} is not recognized (norm type {norm_type!r})")
    return NormConv(conv, norm)


class NormConv(nn.Sequential):
    """A convolution and the normalisation after it (the original's Sequential of the two, same state
    names); `slope` folds the leaky ReLU that follows into the normalisation's pass."""

    def execute(self, x, slope=None):
        return self[1](self[0](x), slope=slope)


def param_free_norm(kind, config_text, norm_nc):
    """(normalisation, kernel size) of a modulated norm's config, '<kind><norm><k>x<k>' (kind 'spade' or
    'fade'; norm 'instance', 'batch' or 'syncbatch'), as the original parses e.g. 'spadesyncbatch3x3'."""
    parsed = re.fullmatch(rf"{kind}(\D+)(\d)x\d", config_text)
    if parsed is None:
        raise ValueError(f"{config_text!r} is not a {kind.upper()} norm (expected e.g. '{kind}syncbatch3x3')")
    norm_type, ks = parsed.group(1), int(parsed.group(2))
    if norm_type == "instance":
        return InstanceNorm2d(norm_nc), ks
    if norm_type in ("syncbatch", "batch"):
        return SyncBatchNorm(norm_nc, affine=False, sync=norm_type == "syncbatch"), ks
    raise ValueError(f"{norm_type!r} is not a recognized param-free norm type in {kind.upper()}")


class SegmentationMap:
    """A generator's conditioning map as SPADE reads it: the semantics (one-hot over the first `num_ids`
    channels, then any other channels, e.g. instance edges) and its label ids. A convolution of a
    one-hot map is a gather of weight columns by label (`label_conv`): the same sums with 1/num_ids of
    the multiply-adds, so SPADE's mlp_shared reads the ids and convolves only the other channels.
    The semantics must be one-hot there, as `data.semantics.make_semantics` builds them."""

    def __init__(self, semantics, num_ids, style=None):
        self.semantics, self.num_ids = semantics, num_ids
        self.style = style  # a CLIP model's style vector w [N, width] (clip_modulation.ClipMapping), else None
        # a pixel with no class (all zeros) reads no weights: label num_ids, outside the table
        self.ids = label_ids(semantics, num_ids).reshape(semantics.shape[0], 1, *semantics.shape[2:])
        self._resized = {}

    def at(self, size):
        """(ids [N, H, W], other channels or None) at `size`, resized as F.interpolate 'nearest' does."""
        size = (int(size[0]), int(size[1]))
        if size not in self._resized:
            ids = resize_nearest(self.ids, size)
            other = None
            if self.semantics.shape[1] > self.num_ids:
                other = resize_nearest(self.semantics[:, self.num_ids:], size)
            self._resized[size] = (ids.reshape(ids.shape[0], *size), other)
        return self._resized[size]


def conv_of_semantics(conv, segmap, size=None, relu=False):
    """`conv(segmap.semantics)` resized to `size` (default: as they are), then ReLU if `relu`: a stride-1,
    odd-square-kernel convolution layer (plain or spectral) over the semantics, computed from their label
    ids (`label_conv`) plus a convolution of any other channels."""
    ids, other = segmap.at(size or segmap.semantics.shape[2:])
    weight = conv.weight_for()
    pad = conv.padding if isinstance(conv.padding, int) else conv.padding[0]
    assert conv.stride in (1, (1, 1)), conv.stride
    k = segmap.num_ids
    if other is None:
        return label_conv(ids, weight, conv.bias, pad, relu=relu)
    out = label_conv(ids, weight[:, :k], conv.bias, pad)
    out = out + winograd.conv2d(other, weight[:, k:], None, 1, pad)
    return nn.relu(out) if relu else out


class GammaBetaConv2d(winograd.Conv2d):
    """The original's `mlp_gamma` and `mlp_beta` (two convolutions of one input, `norm_nc` channels each)
    stored as one: gamma's output channels, then beta's. Their input is read once and its gradient comes
    from one backward pass, with no copy of the weights per forward. `parts` names the original layers:
    checkpoints, .pth files and parity archives keep them as two (`checkpoint.original_layout`), and
    initialisation treats each as its own layer (`base.BaseNetwork.init_weights`)."""

    parts = ("mlp_gamma", "mlp_beta")

    def __init__(self, in_channels, norm_nc, kernel_size, padding):
        super().__init__(in_channels, len(self.parts) * norm_nc, kernel_size, padding=padding)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation. `config_text` is e.g. 'spadesyncbatch3x3' or 'spadeinstance5x5'.
    With `style_width` > 0 (a CLIP model), a `clip_head` scales and shifts the hidden map (mlp_shared's
    convolution, before its ReLU) by the SegmentationMap's style vector: h * (1 + s(w)) + b(w)."""

    nhidden = 128

    def __init__(self, config_text, norm_nc, label_nc, style_width=0):
        self.param_free_norm, ks = param_free_norm("spade", config_text, norm_nc)
        pw = ks // 2
        self.mlp_shared = nn.Sequential(winograd.Conv2d(label_nc, self.nhidden, ks, padding=pw), nn.ReLU())
        self.mlp_gamma_beta = GammaBetaConv2d(self.nhidden, norm_nc, ks, padding=pw)
        if style_width:
            self.clip_head = ClipHead(style_width, self.nhidden)

    def execute(self, x, segmap, slope=None):
        """`segmap`: the semantics (a Var) or a SegmentationMap of them (the generators pass one).
        With `slope`, the leaky ReLU that follows in a residual block is applied too."""
        if hasattr(self, "clip_head"):
            actv = nn.relu(self.clip_head(self.hidden(segmap, x.shape[2:]), self.style_of(segmap)))
        elif isinstance(segmap, SegmentationMap):
            actv = self.hidden_from_ids(segmap, x.shape[2:], relu=True)
        else:
            actv = self.mlp_shared(resize_nearest(segmap, x.shape[2:]))
        return modulated_norm(self, x, actv, slope)

    def hidden(self, segmap, size):
        """mlp_shared's convolution of the semantics at `size`, before its ReLU."""
        if isinstance(segmap, SegmentationMap):
            return self.hidden_from_ids(segmap, size)
        return self.mlp_shared[0](resize_nearest(segmap, size))

    @staticmethod
    def style_of(segmap):
        style = getattr(segmap, "style", None)
        if style is None:
            raise ValueError("a CLIP-modulated SPADE needs a SegmentationMap with a style vector (the generator "
                             "makes one from the CLIP embedding)")
        return style

    def hidden_from_ids(self, segmap, size, relu=False):
        """mlp_shared's convolution of the semantics, from their label ids (then its ReLU if `relu`)."""
        return conv_of_semantics(self.mlp_shared[0], segmap, size, relu)


class FADE(nn.Module):
    """Feature-adaptive denormalisation (TSIT, Jiang et al. 2020): SPADE's modulation, but gamma and
    beta are single convolutions of a feature map of the content stream at x's scale (no shared
    hidden layer, no resizing). `config_text` is e.g. 'fadesyncbatch3x3' or 'fadeinstance3x3'."""

    def __init__(self, config_text, norm_nc, feature_nc):
        self.param_free_norm, ks = param_free_norm("fade", config_text, norm_nc)
        pw = ks // 2
        self.mlp_gamma_beta = GammaBetaConv2d(feature_nc, norm_nc, ks, padding=pw)

    def execute(self, x, feature, slope=None):
        return modulated_norm(self, x, feature, slope)


def modulated_norm(layer, x, actv, slope=None):
    """A SPADE or FADE `layer`'s output, norm(x) * (1 + gamma) + beta with gamma, beta = mlp_gamma(actv),
    mlp_beta(actv), then leaky ReLU with `slope` unless None. On the CPU the rest after the convolution
    runs in fused_norm's kernels; else, or with them disabled, layer by layer."""
    conv = layer.mlp_gamma_beta
    if not fused_norm.enabled():
        gb = conv(actv)
        c = x.shape[1]
        out = layer.param_free_norm(x) * (1 + gb[:, :c]) + gb[:, c:]
        return out if slope is None else nn.leaky_relu(out, slope)
    stats = layer.param_free_norm.statistics(x)
    gb = winograd.conv2d(actv, conv.weight_for(actv), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return fused_norm.modulate(x, gb, conv.bias, stats, slope)
