"""Check jspade against reference vectors from the original PyTorch SPADE or TSIT, or from openai/CLIP
(clip_reference/FORMAT.md; the weight files beside such an archive are checked too).

    python scripts/check_parity.py ../shared/fixtures/spade_reference/spade_landscape_vae.npz [more.npz ...]

Builds the networks (SPADE or TSIT, by its "netG") from each archive's config_json, runs every check
of FORMAT.md (forwards in training and eval mode, running statistics and spectral-norm vectors after
a forward, discriminator features, encoder, VGG features, one generator step and the discriminator
step after it, with losses and gradients, instance edges where present) and prints each array's
error against its tolerance.

FORMAT.md's rule: activations, features, losses and state must meet the tolerance; gradients the
tolerance plus their "float32 noise": how far our own result moves when every weight and input moves
by at most one float32 ulp (the largest change over --noise-runs reruns). A GAN step's gradient
passes through many ReLU, hinge and L1 kinks; when a few sit within rounding of zero, a gradient is
only defined up to that noise, in the reference too. A gradient over tolerance but within tolerance +
noise is marked yes*. G's forwards get a noise column too, for information only: an activation
over tolerance but within tolerance + noise is marked NO* and still fails.

Where an archive carries the reference's own noise (`noise.expected.*`: how far the original code moves
under one-ulp nudges of its weights and inputs), every array is held to its tolerance plus that noise
(a gradient: plus the larger of that and our own), the table gets a "ref noise" column, and an array
that passed only with the reference's noise is marked yes+.

Exits 0 when every array of every archive is within its bound, 1 otherwise or when an archive cannot be
read (one line naming it and the reason).
"""
import sys

from jspade import cli
from jspade.parity import ParityRun
from jspade.clip.parity import ClipParityRun, is_clip_archive


def checker_for(path):
    """The checker of an archive, chosen by its format (opening it checks it: a malformed archive is an
    error naming the file). SPADE and TSIT archives share spade_reference/FORMAT.md's layout; their
    config_json's netG picks the generator."""
    if is_clip_archive(path):  # clip_reference/FORMAT.md: CLIP's config_json (embed_dim, ...)
        return ClipParityRun(path)
    return ParityRun(path)


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("fixtures", nargs="+", type=cli.existing_path("file"),
                    help="reference archives (.npz) in the FORMAT.md format")
    ap.add_argument("--failures-only", action="store_true", help="print only the arrays over tolerance")
    ap.add_argument("--noise-runs", type=cli.int_at_least(0), default=8, metavar="N",
                    help="reruns of the generator/discriminator step with ulp-nudged weights and inputs, "
                         "to measure each output's float32 noise (FORMAT.md asks for at least 8; 0: skip, "
                         "then gradients must meet the bare tolerance; each run takes about as long as "
                         "the step itself; default: %(default)s)")
    args = ap.parse_args(argv)
    checkers = [checker_for(path) for path in args.fixtures]  # every archive checked before the long runs
    all_ok = True
    for path, checker in zip(args.fixtures, checkers):
        results = checker.run(noise_runs=args.noise_runs)
        failed = [r for r in results if not r.passed]
        all_ok &= not failed
        with_reference_noise = any(r.reference_noise is not None for r in results)
        print(f"\n{path}: {len(results) - len(failed)}/{len(results)} arrays within FORMAT.md's bounds")
        print(f"{'array':<70} {'max|err|':>11} {'tolerance':>11} {'f32 noise':>11}"
              + (f" {'ref noise':>11}" if with_reference_noise else "") + "  ok")
        for r in results:
            if args.failures_only and r.passed:
                continue
            noise = f"{r.noise:11.3e}" if r.noise is not None else f"{'':11}"
            if with_reference_noise:
                noise += f" {r.reference_noise:11.3e}" if r.reference_noise is not None else f" {'':11}"
            verdict = ("yes" if r.ok else "yes+" if r.needed_reference_noise else "yes*" if r.passed
                       else "NO*" if r.within_noise else "NO")
            print(f"{r.name:<70} {r.error:11.3e} {r.tolerance:11.3e} {noise}  {verdict}")
        if any(r.needed_reference_noise for r in results):
            print("yes+: over the bare tolerance but within tolerance + the reference's own float32 noise "
                  "(ref noise), which FORMAT.md's rule allows (see --help).")
        if any(r.passed and not r.ok and not r.needed_reference_noise for r in results):
            print("yes*: a gradient over the bare tolerance but within tolerance + its float32 noise, "
                  "which FORMAT.md's rule allows (see --help).")
        if any(not r.passed and r.within_noise for r in results):
            print("NO*: an activation over its bound but within tolerance + our own float32 noise. FORMAT.md "
                  "counts only the reference's noise for activations (none where the archive has none), so it "
                  "fails; the noise says the array is ill-conditioned.")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(cli.run(main))
