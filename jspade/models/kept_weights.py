"""Weights derived once and kept between the forwards of an application that renders (inference.render:
infer, the painter): spectral norm's W / sigma (about a tenth of an inference at ngf 16) and, on the CPU,
convolution weights in the form oneDNN's inference primitive reads (`winograd.prepare`: reordered, or
transformed for Winograd; at ngf 64 the reorders cost a sixth of an inference).

A kept value's key is the ids of the Vars it comes from, which change whenever one is updated (a
training step, an EMA update, a load), and the input's shape, so a kept value is never stale. Only
within `keeping_inference_weights()` and under jt.no_grad: a training process (whose FID and sample
renders run under no_grad too) keeps no copy of the weights it trains. The exception is a layer whose
weight never trains (`always`: VGG19's, `winograd.Conv2d(frozen=True)`), which keeps its derived
weights for as long as the weight stays the same.
"""
import contextlib
import weakref

from jspade.runtime import jt

_kept = weakref.WeakKeyDictionary()  # layer -> (key, value)
_keeping = False


@contextlib.contextmanager
def keeping_inference_weights():
    """Within this block, inference forwards keep their layers' derived weights (see above)."""
    global _keeping
    saved, _keeping = _keeping, True
    try:
        yield
    finally:
        _keeping = saved


def keeping():
    """Whether derived weights are kept now: within keeping_inference_weights() and under jt.no_grad."""
    return _keeping and bool(jt.flags.no_grad)


def kept(layer, sources, make, shape=(), always=False):
    """make() (derived from the Vars `sources`, for inputs of `shape`), kept for `layer` while keeping()
    (or `always`: a layer whose weight never trains); otherwise computed afresh, and what `layer` kept is
    dropped."""
    if not (always or keeping()):
        _kept.pop(layer, None)
        return make()
    key = (tuple(v.id for v in sources), tuple(shape))
    entry = _kept.get(layer)
    if entry is None or entry[0] != key:
        _kept.pop(layer, None)  # the old value goes before the new one is made
        value = make()
        value.sync()  # a Var, or winograd.KeptWeights
        entry = _kept[layer] = (key, value)
    return entry[1]


def drop(layer):
    """Forget what `layer` kept (a training forward)."""
    _kept.pop(layer, None)


def is_kept(layer):
    return layer in _kept
