"""Synchronised batch norm across MPI ranks: two ranks, each holding half of a union batch, must
compute what one process computes on the whole batch (outputs, running statistics, input gradients,
and parameter gradients once the per-rank ones are summed over ranks).

The test starts `tests/mpi_syncbn_worker.py` under OpenMPI with 2 ranks (Jittor on CPU needs nothing
special under mpirun; the first run may compile kernels for a while) and compares its result with
the same computation (`mpi_syncbn_worker.compute`) run here in a single process. By hand:

    cd <repo> && JSPADE_DEVICE=cpu mpirun --allow-run-as-root --oversubscribe -np 2 \\
        .venv/bin/python tests/mpi_syncbn_worker.py /tmp/mpi_out      # writes /tmp/mpi_out/mpi_result.npz
    .venv/bin/python -m pytest -q tests/test_mpi_syncbn.py
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jspade.runtime import jt

HERE = Path(__file__).resolve().parent
WORKER = HERE / "mpi_syncbn_worker.py"


def test_jittor_mpi_attributes_exist():
    assert isinstance(jt.in_mpi, bool) and not jt.in_mpi  # pytest itself is not under mpirun
    assert jt.rank == 0 and jt.world_size == 1


@pytest.fixture(scope="module")
def mpi_result(tmp_path_factory):
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun is not installed (OpenMPI): the 2-rank SyncBatchNorm test cannot run")
    out = tmp_path_factory.mktemp("mpi")
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH") if k in os.environ}
    env["JSPADE_DEVICE"] = "cpu"
    cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2", sys.executable, str(WORKER), str(out)]
    try:
        proc = subprocess.run(cmd, env=env, cwd=HERE.parent, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpirun did not finish in 240 s: {' '.join(cmd)}\n{(e.stderr or '')[-3000:]}")
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    result = out / "mpi_result.npz"
    assert result.is_file(), f"rank 0 wrote no result:\n{proc.stderr[-3000:]}"
    return dict(np.load(result))


@pytest.fixture(scope="module")
def single():
    import mpi_syncbn_worker as worker  # tests/ is on the path of every test module (pytest's rootdir-less import)
    return worker, worker.compute(0, worker.UNION)


def halves(per_rank):
    """[world, per, ...] -> [world * per, ...]: the ranks' halves in rank order."""
    return per_rank.reshape(-1, *per_rank.shape[2:])


def test_two_ranks_ran(mpi_result):
    assert int(mpi_result["world_size"]) == 2
    np.testing.assert_array_equal(mpi_result["ranks"].ravel(), [0, 1])


@pytest.mark.parametrize("key", ["bn.out", "block.out"])
def test_outputs_use_union_batch_statistics(mpi_result, single, key):
    _, ref = single
    got = halves(mpi_result[f"per_rank.{key}"])
    assert got.shape == ref[key].shape
    np.testing.assert_allclose(got, ref[key], rtol=1e-5, atol=1e-5)
    # per-rank statistics would give a clearly different result
    worker, _ = single
    local = worker.compute(0, worker.UNION // 2)[key]
    assert np.abs(local - ref[key][: worker.UNION // 2]).max() > 1e-3


def test_running_statistics_and_spectral_vectors(mpi_result, single):
    _, ref = single
    keys = [k for k in ref if k.startswith("state.")]
    assert any(k.endswith("running_var") for k in keys) and any(k.startswith("state.block.") for k in keys)
    assert any(k.endswith("weight_u") for k in keys)
    for key in keys:
        per_rank = mpi_result[f"per_rank.{key}"]
        for rank in range(2):  # every rank holds the union-batch statistics
            np.testing.assert_allclose(per_rank[rank], ref[key], rtol=1e-5, atol=1e-5, err_msg=f"{key} rank {rank}")


@pytest.mark.parametrize("key", ["bn.grad_x", "block.grad_x", "block.grad_seg"])
def test_input_gradients(mpi_result, single, key):
    _, ref = single
    got = halves(mpi_result[f"per_rank.{key}"])
    scale = np.abs(ref[key]).max()
    assert scale > 0
    np.testing.assert_allclose(got, ref[key], rtol=0, atol=1e-4 * scale)


def _check_param_grads(mpi_result, ref, keys):
    assert keys
    # some gradients are analytically zero (a conv bias right before a batch norm): their tolerance is
    # relative to the module's largest gradient instead of their own rounding noise
    overall = max(np.abs(ref[k]).max() for k in keys)
    for key in keys:
        got = mpi_result[f"allreduced.{key}"]
        scale = max(np.abs(ref[key]).max(), 1e-2 * overall)
        np.testing.assert_allclose(got, ref[key], rtol=0, atol=1e-4 * scale, err_msg=key)


def test_block_parameter_gradients_sum_over_ranks(mpi_result, single):
    _, ref = single
    keys = [k for k in ref if k.startswith("grad.block.")]
    assert {"grad.block.conv_0.weight_orig", "grad.block.norm_0.mlp_gamma_beta.weight", "grad.block.conv_s.weight_orig"} \
        <= set(keys)
    _check_param_grads(mpi_result, ref, keys)
    # and each rank's own gradient is only its share: neither rank alone has the total
    for key in ("grad.block.conv_1.weight_orig", "grad.block.norm_1.mlp_gamma_beta.bias"):
        for rank in range(2):
            assert np.abs(mpi_result[f"per_rank.{key}"][rank] - ref[key]).max() > 1e-3 * np.abs(ref[key]).max()


def test_sync_batch_norm_affine_gradients_sum_over_ranks(mpi_result, single):
    _, ref = single
    _check_param_grads(mpi_result, ref, ["grad.bn.weight", "grad.bn.bias"])
