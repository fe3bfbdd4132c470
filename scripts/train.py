"""Train SPADE.

  python scripts/train.py                                   # the CPU demo on synthetic landscapes
  python scripts/train.py --config configs/landscape_512.toml --data datasets/landscape/train
  python scripts/train.py --config ... --name myrun --resume            # continue a run exactly
  mpirun -np 4 python scripts/train.py --config ...                     # data parallel, SyncBN
  python scripts/train.py --config ... --train.restart_on_crash 3        # survive native crashes

Every field of the preset can be overridden with --section.field VALUE (listed below). The run
folder (printed on the last line, after the FID and the report's path) holds config.toml, log.jsonl,
checkpoints/, samples/ and report.html.
"""
import faulthandler
import os
import signal
import sys
from datetime import datetime
from pathlib import Path

from jspade import cli
from jspade.config import add_config_arguments, apply_overrides, check_config, load_config
from jspade.errors import ConfigError

DEFAULT_PRESET = Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.toml"


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=cli.existing_path("file"), default=DEFAULT_PRESET,
                    help="TOML preset (default: configs/demo_cpu.toml, the CPU demo)")
    ap.add_argument("--data", default=None, type=cli.existing_path("folder"),
                    help="training data folder (same as --data.root)")
    ap.add_argument("--name", default=None, help="run folder name under --train.output_dir (same as --train.name)")
    ap.add_argument("--resume", action="store_true", help="continue the run --name from its newest intact checkpoint")
    ap.add_argument("--overwrite", action="store_true",
                    help="start the run --name over (its old contents are moved to <name>.replaced-<time>)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    add_config_arguments(ap)
    args = ap.parse_args(argv)
    if args.resume and args.overwrite:
        ap.error("--resume and --overwrite contradict each other: pass one")

    # The configuration is checked as a whole (the preset's values, the flags, the rules between
    # them) before anything is created: a bad value is one line and exit status 2.
    try:
        cfg = apply_overrides(load_config(args.config), args)
        if args.data:
            cfg.data.root = str(args.data)
            if cfg.data.dataset == "synthetic":
                cfg.data.dataset = "landscape"
        if args.name:
            cfg.train.name = args.name
        check_config(cfg, f"{args.config} with the command line's options")
    except ConfigError as error:
        ap.error(str(error))

    if cfg.train.restart_on_crash > 0 and not os.environ.get("JSPADE_RESTART_CHILD") and not _under_mpi():
        # Train in a child process that this one restarts after a crash (jspade/train/restart.py).
        from jspade.train.restart import run_with_restarts
        argv = list(sys.argv[1:] if argv is None else argv)
        if not cfg.train.name:  # the restarts must find the same run folder
            cfg.train.name = f"{args.config.stem}-{datetime.now():%Y%m%d-%H%M%S}"
            argv += ["--name", cfg.train.name]
        return run_with_restarts([sys.executable, str(Path(__file__).resolve())], argv,
                                 Path(cfg.train.output_dir) / cfg.train.name, cfg.train.restart_on_crash,
                                 env=dict(os.environ))

    from jspade.train.trainer import Trainer  # imports Jittor (slow the first time)
    # A native crash prints every thread's Python stack and ends the process with its real signal
    # (Jittor's own handler exits with status 1 from inside the handler, so the crash would look like
    # an ordinary error to --train.restart_on_crash; see jspade/train/restart.py).
    for sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE):
        signal.signal(sig, signal.SIG_DFL)
    faulthandler.enable(all_threads=True)
    try:
        trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite, preset_name=args.config.stem,
                          progress=not args.no_progress)
    except ConfigError as error:  # a rule only the model or data can check (nothing is created yet)
        ap.error(str(error))
    run_dir = trainer.train()
    if trainer.fid_history.entries:
        (last_iter, last), (best_iter, best) = trainer.fid_history.last, trainer.fid_history.best
        print(f"FID {last:.2f} at iteration {last_iter}; best {best:.2f} at iteration {best_iter} "
              f"({run_dir.resolve() / 'checkpoints' / 'best_fid.pkl'})")
    if trainer.report_path:
        print(f"report: {trainer.report_path.resolve()}")
    print(run_dir.resolve())
    return 0


def _under_mpi():
    return bool(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE"))


if __name__ == "__main__":
    sys.exit(cli.run(main))
