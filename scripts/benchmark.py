"""Speed and memory of training and inference at a given size.

  python scripts/benchmark.py --ngf 16 --ndf 16 --crop-size 128 --batch-size 4 --label-nc 29 --iters 10
  python scripts/benchmark.py ... --json      # one JSON object on the last line

train_iter_s: seconds per training iteration (generator step + discriminator step, VGG loss on,
TTUR Adam updates), after --warmup iterations (Jittor compiles kernels on first use).
infer_img_per_s: generator images per second in eval mode. peak_rss_mb: the process's peak memory.
--breakdown adds the time of the parts of an iteration (forward/backward of each network).

  python scripts/benchmark.py --ema-vs-raw results/demo_cpu-... --val results/synthetic_128x96/val

instead prints, for each numbered checkpoint of a run trained with train.ema_decay, the FID of its raw
and of its EMA generator on the held-out pairs in --val (the run's cached real statistics are reused).
"""
import argparse
import json
import resource
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
    ap.add_argument("--iters", type=int, default=10, help="timed iterations")
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations first (kernel compilation)")
    ap.add_argument("--breakdown", action="store_true", help="also time the parts of an iteration")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--ema-vs-raw", type=Path, metavar="RUN_FOLDER",
                    help="FID of the raw and the EMA generator of each numbered checkpoint of a run (needs --val)")
    ap.add_argument("--val", type=Path, metavar="DIR", help="held-out pairs (imgs/, labels/) for --ema-vs-raw")
    args = ap.parse_args(argv)
    if args.ema_vs_raw:
        if args.val is None:
            ap.error("--ema-vs-raw needs --val DIR (the held-out pairs)")
        return ema_vs_raw(args.ema_vs_raw, args.val, args.json)

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
        g_losses, _, _ = model.generator_losses(sem, real)
        opt_G.step(sum(g_losses.values()), fetch=list(g_losses.values()))
        d_losses = model.discriminator_losses(sem, real)
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
    sys.exit(main())
