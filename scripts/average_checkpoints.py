"""Average the generator (and encoder) weights of several checkpoints of one run into a new one,
a trick that improved FID for strong contest teams.

  python scripts/average_checkpoints.py results/run/checkpoints/iter_00{50,55,60}000.pkl --out avg.pkl

Parameters and running statistics are averaged; each spectral-norm layer's u, v are then set to the
top singular vectors of the averaged weight (averaged u, v would not belong to it). The discriminator
and optimiser state are not averaged: the result is for inference (infer.py, evaluate.py).
"""
import argparse
import sys
from pathlib import Path

from jspade.checkpoint import CheckpointError, average_checkpoints


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path, help="jspade checkpoint files (.pkl) of one run")
    ap.add_argument("--out", required=True, type=Path, help="the averaged checkpoint to write")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = ap.parse_args(argv)
    if len(args.checkpoints) < 2:
        ap.error("give at least two checkpoints")
    try:
        names = average_checkpoints(args.checkpoints, args.out, args.overwrite)
    except FileExistsError as error:
        ap.error(str(error))
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"averaged {len(args.checkpoints)} checkpoints ({', '.join(names)}) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
