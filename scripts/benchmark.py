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
  ... --no-winograd  # this jspade with Jittor's direct 3x3 convolutions (the others as they are)

--netG tsit times the TSIT generator instead of SPADE's (crop size and height multiples of 128, e.g.
--crop-size 256 --aspect-ratio 2); --compare-pytorch then names a checkout of EndlessSora/TSIT (with its
sync_batchnorm folder, from vacancy/Synchronized-BatchNorm-PyTorch, as its README says).

  python scripts/benchmark.py --ema-vs-raw results/demo_cpu-... --val results/synthetic_128x96/val

instead prints, for each numbered checkpoint of a run trained with train.ema_decay, the FID of its raw
and of its EMA generator on the held-out pairs in --val (the run's cached real statistics are reused).
"""
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import jspade
from jspade import cli


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--ngf", type=cli.int_at_least(1), default=16, help="generator width")
    ap.add_argument("--ndf", type=cli.int_at_least(1), default=16, help="discriminator width")
    ap.add_argument("--crop-size", type=cli.int_at_least(8), default=128, help="image width")
    ap.add_argument("--aspect-ratio", type=cli.float_within(0, low_open=True), default=4 / 3, help="width / height")
    ap.add_argument("--batch-size", type=cli.int_at_least(1), default=4)
    ap.add_argument("--label-nc", type=cli.int_at_least(1), default=29, help="number of classes")
    ap.add_argument("--use-vae", action="store_true", help="include the style encoder and KLD")
    ap.add_argument("--no-vgg", action="store_true", help="drop the VGG loss (it is on by default)")
    ap.add_argument("--reuse-fake", action="store_true",
                    help="D step on the G step's fake (train.reuse_fake; not the original's arithmetic)")
    ap.add_argument("--no-winograd", action="store_true",
                    help="3x3 convolutions by Jittor's direct algorithm instead of Winograd (JSPADE_WINOGRAD=0)")
    ap.add_argument("--iters", type=cli.int_at_least(1), default=10, help="timed iterations")
    ap.add_argument("--warmup", type=cli.int_at_least(0), default=3,
                    help="untimed iterations first (kernel compilation)")
    ap.add_argument("--min-seconds", type=cli.float_within(0), default=2.0,
                    help="time each figure over at least this many seconds too: more iterations where --iters "
                         "take less (ten renders at 256x128 take 0.3 s, where a shared machine's swings decide "
                         "the figure); the original's side uses the same rule")
    ap.add_argument("--breakdown", action="store_true", help="also time the parts of an iteration")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--netG", choices=("spade", "tsit"), default="spade", help="the generator to time")
    ap.add_argument("--compare-pytorch", type=Path, metavar="ORIGINAL_REPO",
                    help="also time the original PyTorch code checked out here (NVlabs/SPADE, or EndlessSora/TSIT "
                         "with --netG tsit), side by side")
    ap.add_argument("--torch-python", default=sys.executable, metavar="PYTHON",
                    help="a Python with torch, for --compare-pytorch (default: this one)")
    ap.add_argument("--compare-jspade", metavar="JSPADE_REPO", help="also time another jspade checkout")
    ap.add_argument("--repeats", type=cli.int_at_least(1), default=2, help="rounds of the side-by-side comparison")
    ap.add_argument("--ema-vs-raw", type=Path, metavar="RUN_FOLDER",
                    help="FID of the raw and the EMA generator of each numbered checkpoint of a run (needs --val)")
    ap.add_argument("--val", type=Path, metavar="DIR", help="held-out pairs (imgs/, labels/) for --ema-vs-raw")
    args = ap.parse_args(argv)
    if args.ema_vs_raw:
        if args.val is None:
            ap.error("--ema-vs-raw needs --val DIR (the held-out pairs)")
        return ema_vs_raw(args.ema_vs_raw, args.val, args.json)
    if args.compare_jspade or args.compare_pytorch is not None:
        return compare(args)

    import numpy as np

    from jspade.runtime import jt
    from jspade.config import ModelConfig
    from jspade.data.semantics import semantics_for
    from jspade.config import TrainConfig
    from jspade.models import winograd
    from jspade.models.base import trainable_parameters
    from jspade.models.kept_weights import keeping_inference_weights
    from jspade.models.spade_model import SPADEModel
    from jspade.train.step import build_optimizers, set_lr, train_step

    if args.no_winograd:
        winograd.set_enabled(False)
    opt = ModelConfig(label_nc=args.label_nc, crop_size=args.crop_size, aspect_ratio=args.aspect_ratio,
                      ngf=args.ngf, ndf=args.ndf, use_vae=args.use_vae, no_vgg_loss=args.no_vgg, netG=args.netG)
    model = SPADEModel(opt)
    model.train()
    optimizer_G, optimizer_D = build_optimizers(model, TrainConfig())  # TTUR Adam, as training
    set_lr(optimizer_G, optimizer_D, 2e-4)
    g_params = optimizer_G.params
    _, h = opt.image_size
    rng = np.random.default_rng(0)
    label = jt.array(rng.integers(0, args.label_nc, (args.batch_size, 1, h, args.crop_size)).astype(np.int32))
    real = jt.array(rng.uniform(-1, 1, (args.batch_size, 3, h, args.crop_size)).astype(np.float32))
    sem = semantics_for(opt, label).detach()
    jt.sync_all()

    def train_iter():  # the trainer's own step
        train_step(model, optimizer_G, optimizer_D, sem, real, reuse_fake=args.reuse_fake)

    def timed(fn, n):  # at least n iterations and --min-seconds; each fn ends synchronised
        for _ in range(args.warmup):
            fn()
        jt.sync_all(True)
        t, done = time.perf_counter(), 0
        while done < n or time.perf_counter() - t < args.min_seconds:
            fn()
            done += 1
        jt.sync_all(True)
        return (time.perf_counter() - t) / done

    result = {"config": {k: getattr(args, k) for k in ("ngf", "ndf", "crop_size", "aspect_ratio", "batch_size",
                                                       "label_nc", "use_vae")},
              "vgg": not args.no_vgg, "device": "cuda" if jt.flags.use_cuda else "cpu", "winograd": winograd.enabled()}
    model.eval()

    def infer():  # as inference.render runs it (the painter, infer.py)
        with jt.no_grad(), keeping_inference_weights():
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
    result["jspade"] = str(Path(jspade.__file__).resolve().parent.parent)  # which checkout was timed
    result["config"]["netG"] = args.netG
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v}")
    return 0


SHARED_OPTIONS = ("ngf", "ndf", "crop_size", "aspect_ratio", "batch_size", "label_nc", "iters", "warmup",
                  "min_seconds")
FIGURES = (("train_iter_s", "s / train iteration", "{:.3f}"), ("infer_img_per_s", "inference images / s", "{:.2f}"),
           ("peak_rss_mb", "peak memory (MB)", "{:.0f}"))


def _child_args(args):
    out = []
    for name in SHARED_OPTIONS:
        out += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    out += ["--use-vae"] * args.use_vae + ["--no-vgg"] * args.no_vgg
    return out + ["--json"]


def _command_lines(args):
    """{name: command} of each implementation compared; the options they share are added later."""
    here = Path(__file__).resolve()
    tsit = args.netG == "tsit"
    runs = {"jspade": [sys.executable, str(here), "--netG", args.netG] + ["--reuse-fake"] * args.reuse_fake
            + ["--no-winograd"] * args.no_winograd}
    if args.compare_jspade:  # its own jspade package (see _run_child), not this one
        runs["jspade (other checkout)"] = [sys.executable, str(Path(args.compare_jspade) / "scripts" / "benchmark.py"),
                                           "--netG", args.netG]
    if args.compare_pytorch:
        runs["original"] = [args.torch_python, str(here.with_name("benchmark_original.py")),
                            str(args.compare_pytorch)] + ["--tsit"] * tsit
    return runs


def _run_child(cmd):
    """One benchmark in a fresh process (so that its peak memory is its own); its last line is JSON.
    A jspade checkout's script imports that checkout's package (an editable install would otherwise
    give every checkout this one's)."""
    env = dict(os.environ)
    script = Path(cmd[1])
    if script.name == "benchmark.py" and (script.parent.parent / "jspade").is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(script.parent.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"benchmark failed: {' '.join(cmd[:3])} ...: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(args):
    """Time jspade and the other implementations alternately, each round in fresh processes, and print
    each figure's range and the range of the per-round ratio jspade / other (the machine is shared, so
    only figures measured back to back are compared)."""
    runs = _command_lines(args)
    results = {name: [] for name in runs}
    try:
        for r in range(args.repeats):
            for name, cmd in runs.items():
                results[name].append(_run_child(cmd + _child_args(args)))
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

    summary = {"config": {k: getattr(args, k) for k in SHARED_OPTIONS + ("use_vae", "netG")}, "vgg": not args.no_vgg,
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


def ema_vs_raw(run_dir, val_dir, as_json=False):
    from jspade.data.datasets import build_dataset
    from jspade.inference import load_generator
    from jspade.train.fid_tracker import REAL_STATS_FILE, HeldOutFID

    rows, tracker = [], None
    for path in sorted((run_dir / "checkpoints").glob("iter_*.pkl")):
        row = {"checkpoint": path.name}
        for weights in ("raw", "ema"):
            model, opt = load_generator(path, use_ema=weights == "ema")
            if model.weights != weights:
                break  # no EMA weights in this checkpoint
            if tracker is None:
                held_out = build_dataset("landscape", val_dir, phase="val", label_nc=opt.label_nc,
                                         crop_size=opt.crop_size, aspect_ratio=opt.aspect_ratio,
                                         preprocess_mode="fixed", no_flip=True)
                tracker = HeldOutFID(held_out, opt, run_dir / REAL_STATS_FILE)
            row[f"fid_{weights}"] = round(tracker.measure(model.netG, model.netE), 3)
        if "fid_ema" in row:
            rows.append(row)
            print(f"{row['checkpoint']}: FID raw {row['fid_raw']:.2f}, EMA {row['fid_ema']:.2f}", flush=True)
    if not rows:
        print(f"no numbered checkpoint with EMA weights in {run_dir}/checkpoints", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
