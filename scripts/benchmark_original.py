"""The original PyTorch SPADE (NVlabs/SPADE) timed like `scripts/benchmark.py` times jspade.

Run by `benchmark.py --compare-pytorch ORIGINAL_REPO` with a Python that has torch; standalone:

  /path/to/torch/python scripts/benchmark_original.py /path/to/SPADE --ngf 16 --ndf 16 --crop-size 128 \
      --batch-size 4 --label-nc 29 --iters 10 --json

It builds the original's `Pix2PixTrainer` (its own networks, losses, Adam, TTUR) on random inputs and
times `run_generator_one_step` + `run_discriminator_one_step` and `netG` inference under no_grad.
Three pieces the original imports are not in its repository or not installable offline; they are
supplied here without changing what is computed:
- `models.networks.sync_batchnorm` (a git submodule): on one CPU process its `SynchronizedBatchNorm2d`
  falls back to `F.batch_norm`, i.e. `torch.nn.BatchNorm2d`, which stands in for it;
- `torchvision.models.vgg19`: the same layer list with random weights (jspade's benchmark uses random
  VGG weights too; the arithmetic does not depend on the values);
- `dill` (used only to save options): the standard `pickle`;
- `Module.cuda()`, which its `VGGLoss` calls unconditionally, is a no-op when torch has no CUDA.
"""
import argparse
import contextlib
import io
import json
import pickle
import resource
import sys
import time
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from torch import nn

VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512, "M"]


def _install_stand_ins():
    def vgg19(pretrained=False, **_):
        layers, c = [], 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        return types.SimpleNamespace(features=nn.Sequential(*layers))

    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(vgg19=vgg19)
    sys.modules.setdefault("torchvision", tv)
    sb = types.ModuleType("models.networks.sync_batchnorm")
    sb.SynchronizedBatchNorm2d = nn.BatchNorm2d
    sb.DataParallelWithCallback = nn.DataParallel
    sys.modules["models.networks.sync_batchnorm"] = sb
    if not torch.cuda.is_available():
        nn.Module.cuda = lambda self, device=None: self
    try:
        import dill  # noqa: F401
    except ImportError:
        sys.modules["dill"] = pickle
    try:
        import PIL.Image  # noqa: F401  (TSIT's util imports it; a training step does not use it)
    except ImportError:
        sys.modules["PIL"] = types.SimpleNamespace(Image=types.ModuleType("PIL.Image"))
        sys.modules["PIL.Image"] = sys.modules["PIL"].Image


def original_options(args):
    """The original's training options for the benchmark configuration (its defaults otherwise)."""
    return Namespace(
        isTrain=True, gpu_ids=[], checkpoints_dir="", name="benchmark", model="pix2pix", continue_train=False,
        which_epoch="latest", label_nc=args.label_nc, contain_dontcare_label=False, no_instance=True,
        semantic_nc=args.label_nc, output_nc=3, crop_size=args.crop_size, aspect_ratio=args.aspect_ratio,
        netG="spade", ngf=args.ngf, norm_G="spectralspadesyncbatch3x3", num_upsampling_layers="normal",
        init_type="xavier", init_variance=0.02, z_dim=256, use_vae=args.use_vae, norm_E="spectralinstance",
        netD="multiscale", netD_subarch="n_layer", num_D=2, n_layers_D=4, ndf=args.ndf, norm_D="spectralinstance",
        gan_mode="hinge", no_ganFeat_loss=False, lambda_feat=10.0, no_vgg_loss=args.no_vgg, lambda_vgg=10.0,
        lambda_kld=0.05, lr=args.lr, beta1=0.0, beta2=0.9, no_TTUR=False, niter=50, niter_decay=0)


def tsit_options(args):
    """EndlessSora/TSIT's semantic image synthesis options (its SIS scripts; no style stream), for a
    checkout of that repository instead of NVlabs/SPADE."""
    opt = original_options(args)
    opt.__dict__.update(task="SIS", netG="tsit", norm_G="spectralfadesyncbatch3x3", norm_S="spectralinstance",
                        num_upsampling_layers="more", no_ss=True, alpha=1.0, lambda_vgg=20.0,
                        # its TTUR branch passes betas (0, 0.9), an int and a float, which torch 2.x
                        # refuses; the same betas as floats through the no_TTUR branch
                        no_TTUR=True)
    return opt


def saved_activation_bytes(trainer, data, args):
    """Bytes of the distinct tensors autograd saves for the backward pass of the generator step and of
    the discriminator step (counted by storage, so views of one tensor count once), and the bytes of
    the trained networks' weights, gradients and Adam moments (4x the weights)."""
    def measure(step):
        seen = {}

        def pack(t):
            if isinstance(t, nn.Parameter):
                return t  # weights are counted separately
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step(dict(data))
        return sum(seen.values())

    model = trainer.pix2pix_model
    nets = [model.netG, model.netD] + ([model.netE] if model.netE is not None else [])
    weights = sum(p.numel() * p.element_size() for net in nets for p in net.parameters())
    vgg = sum(p.numel() * p.element_size() for p in model.criterionVGG.parameters()) if not args.no_vgg else 0
    g_saved = measure(trainer.run_generator_one_step)
    d_saved = measure(trainer.run_discriminator_one_step)
    return {"config": {k: getattr(args, k) for k in ("ngf", "ndf", "crop_size", "aspect_ratio", "batch_size",
                                                     "label_nc", "use_vae")},
            "G_step_saved_bytes": g_saved, "D_step_saved_bytes": d_saved,
            "trained_weights_bytes": weights, "weights_grads_adam_bytes": 4 * weights, "vgg_weights_bytes": vgg}


def train_for_minutes(trainer, args):
    """The original train.py's loop on the pairs of TRAIN_ON (imgs/<stem>.jpg, labels/<stem>.png, already at
    the model's size) for --minutes: shuffled epochs, whole batches only (its loader drops the last),
    random horizontal flips, generator step then discriminator step. Saves `latest_net_G.pth` and an
    `opt.txt` into --save-to, the checkpoint folder jspade's infer.py reads. Returns the iterations done."""
    from PIL import Image
    root, out = Path(args.train_on), Path(args.save_to)
    stems = sorted(p.stem for p in (root / "labels").glob("*.png"))
    photos = np.stack([np.asarray(Image.open(root / "imgs" / f"{s}.jpg").convert("RGB")) for s in stems])
    labels = np.stack([np.asarray(Image.open(root / "labels" / f"{s}.png")) for s in stems])[:, None]
    images = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 127.5 - 1  # its ToTensor + Normalize(0.5, 0.5)
    labels = torch.from_numpy(labels.astype(np.int64))
    rng = np.random.default_rng(args.seed)
    b = args.batch_size
    deadline, iterations = time.perf_counter() + 60 * args.minutes, 0
    while time.perf_counter() < deadline:
        order = rng.permutation(len(stems))
        for first in range(0, len(stems) - b + 1, b):
            idx = torch.from_numpy(order[first:first + b])
            flip = torch.from_numpy(rng.random(b) > 0.5)[:, None, None, None]
            image, label = images[idx], labels[idx]
            data = {"label": torch.where(flip, label.flip(3), label), "image": torch.where(flip, image.flip(3), image),
                    "instance": torch.zeros(b, 1, *label.shape[2:]), "path": [""] * b}
            trainer.run_generator_one_step(data)
            trainer.run_discriminator_one_step(data)
            iterations += 1
            if time.perf_counter() >= deadline:
                break
    out.mkdir(parents=True, exist_ok=True)
    torch.save(trainer.pix2pix_model.netG.state_dict(), out / "latest_net_G.pth")
    opt = trainer.opt
    (out / "opt.txt").write_text("".join(f"{k}: {v}\n" for k, v in sorted(vars(opt).items())))
    return iterations


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("original_repo", help="a checkout of github.com/NVlabs/SPADE")
    ap.add_argument("--ngf", type=int, default=16)
    ap.add_argument("--ndf", type=int, default=16)
    ap.add_argument("--crop-size", type=int, default=128)
    ap.add_argument("--aspect-ratio", type=float, default=4 / 3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--label-nc", type=int, default=29)
    ap.add_argument("--use-vae", action="store_true")
    ap.add_argument("--no-vgg", action="store_true")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=2.0,
                    help="time each figure over at least this many seconds too (as benchmark.py)")
    ap.add_argument("--json", action="store_true", help="print the result as one line of JSON")
    ap.add_argument("--tsit", action="store_true", help="ORIGINAL_REPO is EndlessSora/TSIT: its SIS generator")
    ap.add_argument("--saved-activations", action="store_true",
                    help="instead of timing: bytes each training step keeps for its backward pass, and the "
                         "bytes of weights + gradients + Adam moments (for GPU memory estimates)")
    train = ap.add_argument_group("training instead of timing")
    train.add_argument("--train-on", metavar="DIR", help="train the original on these pairs (imgs/, labels/)")
    train.add_argument("--minutes", type=float, default=8.0, help="wall-clock minutes of training")
    train.add_argument("--lr", type=float, default=4e-4, help="base lr (TTUR: G lr/2, D 2 lr), as the demo's")
    train.add_argument("--seed", type=int, default=0, help="torch seed for the initial weights and data order")
    train.add_argument("--save-to", metavar="DIR", help="where latest_net_G.pth and opt.txt go")
    args = ap.parse_args(argv)
    if args.train_on and not args.save_to:
        ap.error("--train-on needs --save-to")

    sys.path.insert(0, args.original_repo)
    _install_stand_ins()
    from trainers.pix2pix_trainer import Pix2PixTrainer

    torch.manual_seed(args.seed)
    opt = tsit_options(args) if args.tsit else original_options(args)
    with contextlib.redirect_stdout(io.StringIO()):  # create_network prints each network's size
        trainer = Pix2PixTrainer(opt)
    if args.train_on:
        started = time.perf_counter()
        iterations = train_for_minutes(trainer, args)
        print(json.dumps({"iterations": iterations, "minutes": (time.perf_counter() - started) / 60,
                          "checkpoint": str(args.save_to), "torch": torch.__version__}))
        return 0
    model = trainer.pix2pix_model
    h = round(args.crop_size / args.aspect_ratio)
    rng = np.random.default_rng(0)
    data = {"label": torch.from_numpy(rng.integers(0, args.label_nc, (args.batch_size, 1, h, args.crop_size))),
            "instance": torch.zeros(args.batch_size, 1, h, args.crop_size),
            "image": torch.from_numpy(rng.uniform(-1, 1, (args.batch_size, 3, h, args.crop_size)).astype(np.float32)),
            "path": [""] * args.batch_size}

    def train_iter():
        trainer.run_generator_one_step(dict(data))
        trainer.run_discriminator_one_step(dict(data))

    semantics, real = model.preprocess_input(dict(data))
    generator_inputs = (semantics, real) if args.tsit else (semantics,)  # TSIT's forward(input, real, z)

    def infer():
        with torch.no_grad():
            model.netG(*generator_inputs)

    if args.saved_activations:
        print(json.dumps(saved_activation_bytes(trainer, data, args)))
        return 0

    def timed(fn, n):  # at least n iterations and --min-seconds, as benchmark.py times
        for _ in range(args.warmup):
            fn()
        t, done = time.perf_counter(), 0
        while done < n or time.perf_counter() - t < args.min_seconds:
            fn()
            done += 1
        return (time.perf_counter() - t) / done

    result = {"config": {k: getattr(args, k) for k in ("ngf", "ndf", "crop_size", "aspect_ratio", "batch_size",
                                                       "label_nc", "use_vae")},
              "vgg": not args.no_vgg, "device": "cpu", "implementation": f"NVlabs/SPADE, torch {torch.__version__}",
              "threads": torch.get_num_threads()}
    model.eval()
    result["infer_img_per_s"] = args.batch_size / timed(infer, args.iters)
    model.train()
    result["train_iter_s"] = timed(train_iter, args.iters)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result, indent=None if args.json else 2))  # --json: one line, as benchmark.py reads it
    return 0


if __name__ == "__main__":
    sys.exit(main())
