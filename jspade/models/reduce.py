"""Accurate float32 reductions.

Jittor's CPU reduce accumulates a whole reduction sequentially: the mean of 6M floats comes out
~2e-3 off (measured), enough to break parity with PyTorch's pairwise sums. Reducing one axis at a
time keeps each partial sum short (~1e-7 relative). Used by the losses."""


def mean(x, dims=None, keepdims=False):
    dims = range(x.ndim) if dims is None else dims
    dims = sorted((d % x.ndim for d in dims), reverse=True)
    for d in dims:
        x = x.mean(dims=(d,), keepdims=True)
    if not keepdims:
        keep = [s for i, s in enumerate(x.shape) if i not in dims]
        x = x.reshape(keep) if keep else x.sum()  # a one-element sum gives a scalar
    return x

