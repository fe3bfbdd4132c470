"""Write a run's report: one HTML page, <RUN_FOLDER>/report.html, with the loss curves, the FID
curve, the learning rate per phase and the sample grids over time (the trainer refreshes it at each
sample step; this makes it for any run folder, also one still training).

  python scripts/report.py results/demo_cpu-20250101-120000
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jspade.report import ReportError, write_report  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, metavar="RUN_FOLDER", help="a jspade training run folder")
    args = ap.parse_args(argv)
    try:
        path = write_report(args.run)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
