"""What every SPADE network shares: the original's weight initialisation and a way to tell
trainable parameters from buffers (Jittor's `parameters()` returns both)."""
import math

from jspade.runtime import jt
from jittor import nn

from jspade.models.normalization import SpectralNorm, SyncBatchNorm


def _weight_of(m):
    return m.weight_orig if isinstance(m, SpectralNorm) else getattr(m, "weight", None)


class BaseNetwork(nn.Module):
    def init_weights(self, init_type="xavier", gain=0.02):
        """The original `BaseNetwork.init_weights`: conv/linear weights by `init_type` with `gain`,
        biases 0; affine batch-norm weights ~ N(1, gain)."""
        for m in self.modules():
            w = _weight_of(m)
            if not isinstance(w, jt.Var):
                continue
            if isinstance(m, SyncBatchNorm):
                w.update(jt.randn(w.shape) * gain + 1.0)
                m.bias.update(jt.zeros(m.bias.shape))
                continue
            if not isinstance(m, (nn.Conv2d, nn.Linear, SpectralNorm)):
                continue
            # layers stored stacked (normalization.GammaBetaConv2d) are initialised as the separate ones they stand for
            fan_out, fan_in = w.shape[0] // len(getattr(m, "parts", "1")), w.shape[1]
            receptive = int(math.prod(w.shape[2:]))
            fan_in, fan_out = fan_in * receptive, fan_out * receptive
            if init_type == "normal":
                new = jt.randn(w.shape) * gain
            elif init_type == "xavier":
                new = jt.randn(w.shape) * (gain * math.sqrt(2.0 / (fan_in + fan_out)))
            elif init_type == "xavier_uniform":
                a = gain * math.sqrt(6.0 / (fan_in + fan_out))
                new = jt.rand(w.shape) * (2 * a) - a
            elif init_type == "kaiming":
                new = jt.randn(w.shape) * math.sqrt(2.0 / fan_in)
            elif init_type == "none":
                continue
            else:
                raise ValueError(f"initialization method {init_type!r} is not implemented")
            w.update(new)
            if getattr(m, "bias", None) is not None:
                m.bias.update(jt.zeros(m.bias.shape))
        jt.sync(list(self.parameters()))  # see checkpoint.load_state_strict
        return self


def trainable_parameters(module):
    """Parameters an optimiser should update (running statistics and spectral u/v are stop-grad buffers)."""
    return [p for p in module.parameters() if not p.is_stop_grad()]
