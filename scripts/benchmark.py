"""Speed and memory of training and inference at a given size.

  python scripts/benchmark.py --ngf 16 --ndf 16 --crop-size 128 --batch-size 4 --label-nc 29 --iters 10
  python scripts/benchmark.py ... --json      # one JSON object on the last line

train_iter_s: seconds per training iteration (generator step + discriminator step, VGG loss on,
TTUR Adam updates), after --warmup iterations (Jittor compiles kernels on first use).
infer_img_per_s: generator images per second in eval mode. peak_rss_mb: the process's peak memory.
--breakdown adds the time of the parts of an iteration (forward/backward of each network).

Side by side with the original PyTorch SPADE (NVlabs/SPADE checked out at ORIGINAL_REPO, run by a Python
that has torch; see scripts/benchmark_original.py), each in its own fresh process, back to back,
--repeats times; prints the range of each figure and of the ratio jspade / original:

  python scripts/benchmark.py --ngf 16 --ndf 16 --crop-size 128 --batch-size 4 \
      --compare-pytorch /work/orig-spade --torch-python /work/torchvenv/bin/python --repeats 3
  ... --compare-jspade /path/to/other/jspade   # also time another jspade checkout (e.g. before a change)
  ... --reuse-fake   # this jspade with train.reuse_fake (the others as they are)
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ngf", type=int, default=16, help="generator width")
    ap.add_argument("--ndf", type=int, default=16, help="discriminator width")
    ap.add_argument("--crop-size", type=int, default=128, help="image width")
    ap.add_argument("--aspect-ratio", type=float, default=4 / 3, help="width / height")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--label-nc", type=int, default=29, help="number of classes")
    ap.add_argument("--use-vae", action="store_true", help="include the style encoder and KLD")
    ap.add_argument("--no-vgg", action="store_true", help="drop the VGG loss (it is on by default)")
    ap.add_argument("--reuse-fake", action="store_true",
                    help="D step on the G step's fake (train.reuse_fake; not the original's arithmetic)")
    ap.add_argument("--iters", type=int, default=10, help="timed iterations")
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations first (kernel compilation)")
    ap.add_argument("--breakdown", action="store_true", help="also time the parts of an iteration")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--compare-pytorch", metavar="ORIGINAL_REPO",
                    help="also time the original PyTorch SPADE checked out here, side by side")
    ap.add_argument("--torch-python", default=sys.executable, help="a Python with torch, for --compare-pytorch")
    ap.add_argument("--compare-jspade", metavar="JSPADE_REPO", help="also time another jspade checkout")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the side-by-side comparison")
    args = ap.parse_args(argv)
    if args.compare_pytorch or args.compare_jspade:
        return compare(args)

    import numpy as np

    from jspade.runtime import jt
    from jspade.config import ModelConfig
    from jspade.data.semantics import semantics_for
    from jspade.models.base import trainable_parameters
    from jspade.models.spade_model import SPADEModel
    from jspade.train.optim import Adam

    opt = ModelConfig(label_nc=args.label_nc, crop_size=args.crop_size, aspect_ratio=args.aspect_ratio,
                      ngf=args.ngf, ndf=args.ndf, use_vae=args.use_vae, no_vgg_loss=args.no_vgg)
    model = SPADEModel(opt)
    model.train()
    g_params = trainable_parameters(model.netG) + (trainable_parameters(model.netE) if model.netE else [])
    opt_G = Adam(g_params, 1e-4)
    opt_D = Adam(trainable_parameters(model.netD), 4e-4)
    h = round(args.crop_size / args.aspect_ratio)
    rng = np.random.default_rng(0)
    label = jt.array(rng.integers(0, args.label_nc, (args.batch_size, 1, h, args.crop_size)).astype(np.int32))
    real = jt.array(rng.uniform(-1, 1, (args.batch_size, 3, h, args.crop_size)).astype(np.float32))
    sem = semantics_for(opt, label).detach()
    jt.sync_all()

    def train_iter():
        g_losses, fake, _ = model.generator_losses(sem, real)
        opt_G.step(sum(g_losses.values()), fetch=list(g_losses.values()) + [fake] * args.reuse_fake)
        d_losses = model.discriminator_losses(sem, real, fake=fake if args.reuse_fake else None)
        opt_D.step(sum(d_losses.values()), fetch=list(d_losses.values()))

    def timed(fn, n):
        for _ in range(args.warmup):
            fn()
        jt.sync_all(True)
        t = time.perf_counter()
        for _ in range(n):
            fn()
        jt.sync_all(True)
        return (time.perf_counter() - t) / n

    result = {"config": {k: getattr(args, k) for k in ("ngf", "ndf", "crop_size", "aspect_ratio", "batch_size",
                                                       "label_nc", "use_vae")},
              "vgg": not args.no_vgg, "device": "cuda" if jt.flags.use_cuda else "cpu"}
    model.eval()

    def infer():
        with jt.no_grad():
            model.netG(sem).sync()

    result["infer_img_per_s"] = args.batch_size / timed(infer, args.iters)
    model.train()
    result["train_iter_s"] = timed(train_iter, args.iters)

    if args.breakdown:
        parts = {}
        parts["G_forward"] = timed(lambda: model.netG(sem).sync(), args.iters)
        parts["G_forward_backward"] = timed(lambda: jt.sync(jt.grad(model.netG(sem).sum(), g_params)), args.iters)
        fake = model.netG(sem).detach()
        fr = jt.concat([jt.concat([sem, fake], 1), jt.concat([sem, real], 1)], 0).detach()
        d_params = trainable_parameters(model.netD)
        parts["D_forward_backward"] = timed(
            lambda: jt.sync(jt.grad(sum(f[-1].sum() for f in model.netD(fr)), d_params)), args.iters)
        if model.vgg is not None:
            fk = fake.clone()
            parts["VGG_forward_backward"] = timed(lambda: jt.grad(sum(x.sum() for x in model.vgg(fk)), fk).sync(),
                                                  args.iters)
        result["breakdown_s"] = parts

    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v}")
    return 0


SHARED_OPTIONS = ("ngf", "ndf", "crop_size", "aspect_ratio", "batch_size", "label_nc", "iters", "warmup")
FIGURES = (("train_iter_s", "s / train iteration", "{:.3f}"), ("infer_img_per_s", "inference images / s", "{:.2f}"),
           ("peak_rss_mb", "peak memory (MB)", "{:.0f}"))


def _child_args(args):
    out = []
    for name in SHARED_OPTIONS:
        out += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    out += ["--use-vae"] * args.use_vae + ["--no-vgg"] * args.no_vgg
    return out + ["--json"]


def _run_child(cmd):
    """One benchmark in a fresh process (so that its peak memory is its own); its last line is JSON."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"benchmark failed: {' '.join(cmd[:3])} ...: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(args):
    """Time jspade and the other implementations alternately, each round in fresh processes, and print
    each figure's range and the range of the per-round ratio jspade / other (the machine is shared, so
    only figures measured back to back are compared)."""
    here = Path(__file__).resolve()
    runs = {"jspade": [sys.executable, str(here)]}
    if args.compare_jspade:
        runs["jspade (other checkout)"] = [sys.executable, str(Path(args.compare_jspade) / "scripts" / "benchmark.py")]
    if args.compare_pytorch:
        runs["original"] = [args.torch_python, str(here.with_name("benchmark_original.py")), args.compare_pytorch]
    results = {name: [] for name in runs}
    try:
        for r in range(args.repeats):
            for name, cmd in runs.items():
                results[name].append(_run_child(cmd + _child_args(args) + ["--reuse-fake"] * (
                    args.reuse_fake and name == "jspade")))
                print(f"round {r + 1}/{args.repeats} {name}: " + ", ".join(
                    f"{key} {fmt.format(results[name][-1][key])}" for key, _, fmt in FIGURES), file=sys.stderr,
                    flush=True)
    except SystemExit as failure:  # keep the rounds that completed
        done = min(len(v) for v in results.values())
        if done == 0:
            raise
        print(f"{failure}; reporting the {done} complete round(s)", file=sys.stderr)
        results = {name: v[:done] for name, v in results.items()}

    def span(values, fmt):
        lo, hi = min(values), max(values)
        return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"

    summary = {"config": {k: getattr(args, k) for k in SHARED_OPTIONS + ("use_vae",)}, "vgg": not args.no_vgg,
               "repeats": args.repeats, "results": results}
    names = list(runs)
    header = ["figure"] + names + [f"ratio jspade / {n}" for n in names[1:]]
    rows = []
    for key, label, fmt in FIGURES:
        row = [label] + [span([x[key] for x in results[n]], fmt) for n in names]
        for other in names[1:]:
            ratios = [a[key] / b[key] for a, b in zip(results["jspade"], results[other])]
            summary.setdefault("ratios", {}).setdefault(other, {})[key] = ratios
            row.append(span(ratios, "{:.2f}"))
        rows.append(row)
    if args.json:
        print(json.dumps(summary))
    else:
        print(" | ".join(header))
        for row in rows:
            print(" | ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
