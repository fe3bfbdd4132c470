"""The Adam update (jspade/train/optim.py): PyTorch's rule, its multithreaded CPU kernel equal to the
element-wise ops up to float32 rounding, and the chunked update (which bounds the extra memory of a
step) equal to one update of everything."""
import numpy as np

from jspade.runtime import jt
from jspade.train import optim
from jspade.train.optim import Adam

SHAPES = [(16, 8, 3, 3), (16,), (300,)]


def run(steps, lr=2e-4, betas=(0.5, 0.999), update=None, chunk_bytes=None, monkeypatch=None, keep_m=False):
    rng = np.random.default_rng(0)
    params = [jt.array(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]
    opt = Adam(params, lr=lr, betas=betas)
    if keep_m:  # as if beta1 = 0 kept its first moment (the original's Adam does)
        opt.keeps_m, opt.m = True, [jt.zeros(s) for s in SHAPES]
    if update is not None:
        monkeypatch.setattr(Adam, "_update", staticmethod(update))
    if chunk_bytes is not None:
        monkeypatch.setattr(optim, "CHUNK_BYTES", chunk_bytes)
    for _ in range(steps):
        opt.apply([jt.array(rng.standard_normal(s).astype(np.float32) * 1e-2) for s in SHAPES])
    return [p.numpy() for p in params], [m.numpy() for m in opt.m if m is not None], [v.numpy() for v in opt.v]


def numpy_adam(steps, lr=2e-4, betas=(0.5, 0.999), eps=1e-8):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float64) for s in SHAPES]
    m = [np.zeros(s) for s in SHAPES]
    v = [np.zeros(s) for s in SHAPES]
    b1, b2 = betas
    for t in range(1, steps + 1):
        for i, s in enumerate(SHAPES):
            g = (rng.standard_normal(s).astype(np.float32) * 1e-2).astype(np.float64)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            denom = np.sqrt(v[i]) / np.sqrt(1 - b2 ** t) + eps
            params[i] = params[i] - lr / (1 - b1 ** t) * m[i] / denom
    return params


def test_kernel_equals_the_elementwise_ops_and_pytorchs_rule(monkeypatch):
    kernel = run(3)
    with monkeypatch.context() as mp:
        ops = run(3, update=Adam._update_ops, monkeypatch=mp)
    for a, b in zip(sum(kernel, []), sum(ops, [])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
    for ours, ref in zip(kernel[0], numpy_adam(3)):
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


def test_chunked_update_equals_one_update(monkeypatch):
    whole = run(2, chunk_bytes=1 << 40, monkeypatch=monkeypatch)
    every_tensor = run(2, chunk_bytes=1, monkeypatch=monkeypatch)
    for a, b in zip(sum(whole, []), sum(every_tensor, [])):
        np.testing.assert_array_equal(a, b)


def test_beta1_zero_keeps_no_first_moment_and_steps_as_if_it_did(monkeypatch):
    """TTUR's betas (0, 0.9): m would equal the gradient, so it is not kept; the steps are those of the
    element-wise ops that keep it, and the state saved and restored resumes exactly."""
    lean = run(3, betas=(0.0, 0.9))
    with monkeypatch.context() as mp:
        kept = run(3, betas=(0.0, 0.9), update=Adam._update_ops, monkeypatch=mp, keep_m=True)
    assert lean[1] == [] and len(kept[1]) == len(SHAPES)
    for a, b in zip(lean[0] + lean[2], kept[0] + kept[2]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
    p = jt.array(np.ones(4, np.float32))
    opt = Adam([p], lr=1e-3, betas=(0.0, 0.9))
    opt.apply([jt.array(np.arange(4, dtype=np.float32))])
    state = opt.state_dict()
    assert state["m"] == []
    other = Adam([jt.array(p.numpy())], lr=0.0, betas=(0.0, 0.9))
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.v[0].numpy(), opt.v[0].numpy())
    assert other.step_count == 1 and other.lr == 1e-3


def test_parameters_move_by_about_lr_per_step():
    """Adam's first step moves every weight by ~lr (sign of its gradient): a wrong bias correction or
    eps placement would not."""
    rng = np.random.default_rng(1)
    p = jt.array(np.zeros(1000, np.float32))
    opt = Adam([p], lr=1e-3, betas=(0.0, 0.9))
    g = rng.standard_normal(1000).astype(np.float32)
    opt.apply([jt.array(g)])
    np.testing.assert_allclose(p.numpy(), -1e-3 * np.sign(g), rtol=1e-4)
