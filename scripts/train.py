"""Train SPADE.

  python scripts/train.py                                   # the CPU demo on synthetic landscapes
  python scripts/train.py --config configs/landscape_512.toml --data datasets/landscape/train
  python scripts/train.py --config ... --name myrun --resume            # continue a run exactly
  mpirun -np 4 python scripts/train.py --config ...                     # data parallel, SyncBN

Every field of the preset can be overridden with --section.field VALUE (listed below). The run
folder (printed on the last line) holds config.toml, log.jsonl, checkpoints/ and samples/.
"""
import argparse
import sys
from pathlib import Path

from jspade.config import add_config_arguments, apply_overrides, load_config

DEFAULT_PRESET = Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.toml"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=DEFAULT_PRESET,
                    help="TOML preset (default: configs/demo_cpu.toml, the CPU demo)")
    ap.add_argument("--data", default=None, help="training data folder (same as --data.root)")
    ap.add_argument("--name", default=None, help="run folder name under --train.output_dir (same as --train.name)")
    ap.add_argument("--resume", action="store_true", help="continue the run --name from its latest checkpoint")
    ap.add_argument("--overwrite", action="store_true",
                    help="train into an existing run folder that is not being resumed (replaces its checkpoints)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    add_config_arguments(ap)
    args = ap.parse_args(argv)

    cfg = apply_overrides(load_config(args.config), args)
    if args.data:
        cfg.data.root = args.data
        if cfg.data.dataset == "synthetic":
            cfg.data.dataset = "landscape"
    if args.name:
        cfg.train.name = args.name

    from jspade.train.trainer import Trainer  # imports Jittor (slow the first time)
    trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite, preset_name=args.config.stem,
                      progress=not args.no_progress)
    run_dir = trainer.train()
    print(run_dir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
