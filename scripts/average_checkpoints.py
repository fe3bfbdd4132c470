"""Average the generator (and encoder) weights of several checkpoints of one run into a new one,
a trick that improved FID for strong contest teams.

  python scripts/average_checkpoints.py results/run/checkpoints/iter_00{50,55,60}000.pkl --out avg.pkl

Parameters and running statistics are averaged; each spectral-norm layer's u, v are then set to the
top singular vectors of the averaged weight (averaged u, v would not belong to it). The discriminator
and optimiser state are not averaged: the result is for inference (infer.py, evaluate.py). When every
checkpoint has EMA weights, those are averaged too (and rendered by default); --no-ema leaves them out.
"""
import sys

from jspade import cli


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoints", nargs="+", type=cli.existing_path("file"),
                    help="jspade checkpoint files (.pkl) of one run")
    ap.add_argument("--out", required=True, type=cli.output_file, help="the averaged checkpoint to write")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ap.add_argument("--no-ema", action="store_true",
                    help="average only the raw weights, leaving the checkpoints' EMA weights out of --out")
    args = ap.parse_args(argv)
    if len(args.checkpoints) < 2:
        ap.error("give at least two checkpoints")
    if args.out.exists() and not args.overwrite:
        ap.error(f"{args.out} exists; pass --overwrite to replace it")

    from jspade.checkpoint import average_checkpoints, read_checkpoint

    names = average_checkpoints(args.checkpoints, args.out, overwrite=True, use_ema=not args.no_ema)
    with_ema = "ema_networks" in read_checkpoint(args.out)
    print(f"averaged {len(args.checkpoints)} checkpoints ({', '.join(names)}"
          + (", with their EMA weights" if with_ema else "") + f") into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
