"""CLIP modulation of SPADE (`model.clip_dim > 0`; docs/clip_spade.md).

One mapping network per generator turns a CLIP embedding into a style vector w, once per forward;
small per-layer heads turn w into a channel-wise scale and shift of a feature map,
`h * (1 + s(w)) + b(w)`. The heads start at zero, so a new CLIP model computes exactly what the same
plain SPADE computes, and a plain SPADE checkpoint fine-tunes into a CLIP model (its missing keys are
only the CLIP ones, which keep that zero start). Every CLIP parameter's name has a part starting
with `clip_`, which is how checkpoints tell the new keys apart.
"""
import math

from jspade.runtime import jt
from jittor import nn

STYLE_WIDTH = 256  # width of the mapping network and of w


def is_clip_key(name):
    """Whether a state-dict key belongs to the CLIP modulation (absent from a plain SPADE)."""
    return any(part.startswith("clip_") for part in name.split("."))


class ClipMapping(nn.Module):
    """CLIP embedding [N, D] -> style vector w [N, width]: the embedding scaled to unit RMS (its
    direction is what CLIP's cosine similarity compares; unit RMS instead of unit norm keeps w of
    order 1 for any D), then two Linear layers with leaky ReLU."""

    def __init__(self, clip_dim, width=STYLE_WIDTH):
        self.clip_dim, self.width = clip_dim, width
        self.fc_0 = nn.Linear(clip_dim, width)
        self.fc_1 = nn.Linear(width, width)

    def reset_parameters(self):
        """He-normal weights for the leaky ReLUs, zero biases. The project's init (gain 0.02) would
        make w ~1e-5, and every head's gradient is proportional to w."""
        for fc in (self.fc_0, self.fc_1):
            fan_in = fc.weight.shape[1]
            fc.weight.update(jt.randn(fc.weight.shape) * math.sqrt(2.0 / (1 + 0.2 ** 2) / fan_in))
            fc.bias.update(jt.zeros(fc.bias.shape))

    def execute(self, embedding):
        if embedding.ndim != 2 or embedding.shape[1] != self.clip_dim:
            raise ValueError(f"CLIP embedding of shape {tuple(embedding.shape)}; the model takes [N, {self.clip_dim}] "
                             f"(model.clip_dim {self.clip_dim})")
        norm = jt.sqrt((embedding * embedding).sum(dim=1, keepdims=True))
        unit = embedding * (math.sqrt(self.clip_dim) / jt.maximum(norm, 1e-12))
        w = nn.leaky_relu(self.fc_0(unit), 0.2)
        return nn.leaky_relu(self.fc_1(w), 0.2)


class ClipHead(nn.Module):
    """w -> channel-wise (s, b) for a `channels`-channel map; `execute(h, w)` = h * (1 + s) + b.
    One Linear(width -> 2 * channels), zero at the start (`reset_parameters`, called after the
    network's weight init, which would otherwise randomise it)."""

    def __init__(self, width, channels):
        self.channels = channels
        self.clip_affine = nn.Linear(width, 2 * channels)

    def reset_parameters(self):
        self.clip_affine.weight.update(jt.zeros(self.clip_affine.weight.shape))
        self.clip_affine.bias.update(jt.zeros(self.clip_affine.bias.shape))

    def execute(self, h, w):
        c = self.channels
        sb = self.clip_affine(w)
        scale = sb[:, :c].reshape(-1, c, 1, 1)
        shift = sb[:, c:].reshape(-1, c, 1, 1)
        return h * (1 + scale) + shift


def reset_clip_parameters(network):
    """Give every CLIP part of `network` its start (mapping: He init; heads: zero). Call after the
    network's `init_weights`, which treats them as ordinary Linear layers."""
    for m in network.modules():
        if isinstance(m, (ClipMapping, ClipHead)):
            m.reset_parameters()
    jt.sync(list(network.parameters()))
    return network


def fill_new_clip_keys(network, state):
    """`state` plus the network's own current values for the CLIP keys it lacks (a plain SPADE's
    weights going into a CLIP model keep the heads' zero start); returns (state, the keys filled).
    Any other missing key stays missing, for the strict loader to report."""
    own = network.state_dict()
    filled = sorted(k for k in own if k not in state and is_clip_key(k))
    if not filled:
        return state, []
    state = dict(state)
    for k in filled:
        state[k] = own[k].numpy()
    return state, filled
