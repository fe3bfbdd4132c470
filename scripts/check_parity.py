"""Check jspade against reference vectors from the original PyTorch SPADE.

    python scripts/check_parity.py ../shared/fixtures/spade_reference/spade_landscape_vae.npz [more.npz ...]

Builds the networks from each archive's config_json, runs every check of FORMAT.md (forwards in
training and eval mode, running statistics and spectral-norm vectors after a forward, discriminator
features, encoder, VGG features, one generator step and the discriminator step after it, with losses
and gradients, instance edges where present), prints each array's error against its tolerance and
exits 1 if any exceeds it.

The step's outputs also get a "float32 noise" column: how far our own result moves when every weight
and input moves by at most one float32 ulp (--noise-runs reruns). A GAN step's gradient passes
through many ReLU, hinge and L1 kinks; when a few sit within rounding of zero, a gradient is only
defined up to that noise, in the reference too. A failure within tolerance + noise is marked NO*:
it still fails (exit 1), but cannot be told apart from rounding; one far beyond it is a bug.
"""
import argparse
import sys
from pathlib import Path

from jspade.parity import run_parity


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixtures", nargs="+", type=Path, help="reference archives (.npz) in the FORMAT.md format")
    ap.add_argument("--failures-only", action="store_true", help="print only the arrays over tolerance")
    ap.add_argument("--noise-runs", type=int, default=3, metavar="N",
                    help="reruns of the generator/discriminator step with ulp-nudged weights and inputs, "
                         "to measure each output's float32 noise (0: skip; each run takes about as long "
                         "as the step itself; default: %(default)s)")
    args = ap.parse_args(argv)
    all_ok = True
    for path in args.fixtures:
        results = run_parity(path, noise_runs=args.noise_runs)
        failed = [r for r in results if not r.ok]
        all_ok &= not failed
        print(f"\n{path}: {len(results) - len(failed)}/{len(results)} arrays within tolerance")
        print(f"{'array':<70} {'max|err|':>11} {'tolerance':>11} {'f32 noise':>11}  ok")
        for r in results:
            if args.failures_only and r.ok:
                continue
            noise = f"{r.noise:11.3e}" if r.noise is not None else f"{'':11}"
            verdict = "yes" if r.ok else "NO*" if r.within_noise else "NO"
            print(f"{r.name:<70} {r.error:11.3e} {r.tolerance:11.3e} {noise}  {verdict}")
        if any(r.within_noise for r in results):
            print("NO*: over tolerance, but within tolerance + the float32 noise of that array "
                  "(see --help); FORMAT.md's tolerance is not met.")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
