"""Which process speaks under MPI: every rank trains, only rank 0 writes files and prints.

Collective steps (a barrier, rank 0's decision) must be reached by every rank in the same order."""
import sys

from jspade.runtime import jt


def is_main_rank():
    return not jt.in_mpi or jt.rank == 0


def rank():
    return jt.rank if jt.in_mpi else 0


def log(msg):
    """A line on stderr, from rank 0 only."""
    if is_main_rank():
        print(msg, file=sys.stderr, flush=True)


def barrier():
    """Wait until every rank gets here (e.g. for the files rank 0 writes)."""
    if jt.in_mpi:
        jt.array([0]).mpi_all_reduce().sync()


def rank0_decides(flag):
    """Rank 0's `flag` on every rank (per-rank clocks differ; a stop must happen at the same iteration)."""
    if not jt.in_mpi:
        return flag
    return bool(jt.array([int(bool(flag))]).mpi_broadcast(0).item())
