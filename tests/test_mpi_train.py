"""Data-parallel training: a 2-rank `mpirun` step equals a 1-rank step on the union batch
(synchronised batch norm, averaged gradients, identical initial weights on every rank).

By hand: mpirun --allow-run-as-root -np 2 .venv/bin/python tests/mpi_train_worker.py /tmp/two.npz
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("mpi_train_worker.py")


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI's mpirun is not installed")
def test_two_rank_step_equals_one_rank_step_on_union_batch(tmp_path):
    env = {**os.environ, "JSPADE_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    subprocess.run([sys.executable, str(WORKER), str(one)], env=env, check=True, timeout=600,
                   capture_output=True)
    run = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", sys.executable,
                          str(WORKER), str(two)], env=env, timeout=900, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = np.load(one), np.load(two)
    assert set(a.files) == set(b.files)
    grads = [k for k in a.files if k.startswith("grad.")]
    assert len(grads) > 50
    # what the optimiser applies: the gradient of the union batch's loss. The absolute floor is a
    # millionth of the network's largest gradient (gradients that are exactly zero come out as noise).
    net_max = {net: max(float(np.abs(a[k]).max()) for k in grads if k.startswith(f"grad.{net}.")) for net in "GD"}
    for k in grads:
        scale = float(np.abs(a[k]).max())
        tol = 1e-4 * scale + 1e-6 * net_max[k.split(".")[1]]
        assert np.abs(a[k] - b[k]).max() <= tol, (k, float(np.abs(a[k] - b[k]).max()), scale)
    for k in a.files:
        if k.startswith("grad."):
            continue
        # Adam's first step moves every parameter by ~lr * sign(grad), so where the exact gradient
        # is zero (e.g. a bias followed by batch norm) float noise decides the sign: compare the
        # parameters whose gradient is not noise.
        g = a.get(f"grad.{k}")
        net = k.split(".")[0]
        meaningful = np.ones(a[k].shape, bool) if g is None else np.abs(g) > 1e-4 * net_max[net]
        diff = np.abs(a[k] - b[k])[meaningful]
        tol = 2e-3 if g is None else 2e-5
        assert diff.size == 0 or diff.max() <= tol * max(1.0, float(np.abs(a[k]).max())), (k, float(diff.max()))
