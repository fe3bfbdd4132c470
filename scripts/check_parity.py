"""Check jspade against reference vectors from the original PyTorch SPADE.

    python scripts/check_parity.py ../shared/fixtures/spade_reference/spade_landscape_vae.npz [more.npz ...]

Builds the networks from each archive's config_json, runs every check of FORMAT.md (forwards in
training and eval mode, running statistics and spectral-norm vectors after a forward, discriminator
features, encoder, VGG features, one generator step and the discriminator step after it, with losses
and gradients, instance edges where present), prints each array's error against its tolerance and
exits 1 if any exceeds it.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jspade.parity import run_parity  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixtures", nargs="+", type=Path, help="reference archives (.npz) in the FORMAT.md format")
    ap.add_argument("--failures-only", action="store_true", help="print only the arrays over tolerance")
    args = ap.parse_args(argv)
    all_ok = True
    for path in args.fixtures:
        results = run_parity(path)
        failed = [r for r in results if not r.ok]
        all_ok &= not failed
        print(f"\n{path}: {len(results) - len(failed)}/{len(results)} arrays within tolerance")
        print(f"{'array':<70} {'max|err|':>11} {'tolerance':>11}  ok")
        for r in results:
            if args.failures_only and r.ok:
                continue
            print(f"{r.name:<70} {r.error:11.3e} {r.tolerance:11.3e}  {'yes' if r.ok else 'NO'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
