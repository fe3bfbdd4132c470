"""Write a run's report: one HTML page, <RUN_FOLDER>/report.html, with the loss curves, the FID
curve, the learning rate per phase and the sample grids over time (the trainer refreshes it at each
sample step; this makes it for any run folder, also one still training).

  python scripts/report.py results/demo_cpu-20250101-120000
"""
import sys
from pathlib import Path

from jspade import cli


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("run", type=Path, metavar="RUN_FOLDER", help="a jspade training run folder")
    args = ap.parse_args(argv)

    from jspade.report import write_report

    print(write_report(args.run))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
