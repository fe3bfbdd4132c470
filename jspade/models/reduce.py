"""Accurate float32 reductions.

Jittor's CPU reduce accumulates a whole reduction sequentially: the mean of 6M floats comes out
~2e-3 off (measured), enough to break parity with PyTorch's pairwise sums. Reducing one axis at a
time keeps each partial sum short (~1e-7 relative). Used by the norms and the losses."""


def mean(x, dims=None, keepdims=False):
    dims = range(x.ndim) if dims is None else dims
    dims = sorted((d % x.ndim for d in dims), reverse=True)
    for d in dims:
        x = x.mean(dims=(d,), keepdims=True)
    if not keepdims:
        keep = [s for i, s in enumerate(x.shape) if i not in dims]
        x = x.reshape(keep) if keep else x.sum()  # a one-element sum gives a scalar
    return x


def expand(v, shape):
    """Broadcast `v` (same ndim, size-1 axes) to `shape` one axis at a time, so that the backward
    pass — a sum over each broadcast axis — is staged as in `mean` rather than one long sum."""
    cur = list(v.shape)
    for d in reversed(range(len(shape))):
        if cur[d] != shape[d]:
            cur[d] = shape[d]
            v = v.broadcast(tuple(cur))
    return v
