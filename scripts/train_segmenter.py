"""Train the segmentation network behind mask accuracy on (real photo -> label map) pairs.

    python scripts/train_segmenter.py --data datasets/synthetic/train --val datasets/synthetic/val \\
        --size 128x96 --epochs 8 --out checkpoints/segmenter.pkl
    python scripts/train_segmenter.py --data data/landscape/train --val data/landscape/val \\
        --size 256x192 --width 32 --epochs 40 --out checkpoints/segmenter_landscape.pkl

Every sample is resized (photo bicubic, label nearest) to --size, and training photos are flipped
horizontally at random. The loss is pixel-wise cross-entropy; pixels labelled with the dontcare id
(= label_nc, e.g. COCO-Stuff's raw 255) are ignored. After each epoch, when --val is given, the pixel
accuracy and mIoU of the network on the REAL validation photos are printed: that is the ceiling
mask accuracy a generator can reach with this segmenter. The checkpoint is written atomically after
every epoch (so an interrupted run keeps the last finished epoch) and an existing checkpoint file
is never replaced unless --overwrite is given.

Use it for mask accuracy:  python scripts/evaluate.py --fake results/ --labels LABEL_DIR --segmenter CKPT
"""
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jspade import cli  # noqa: E402
from jspade.config import size_argument  # noqa: E402

import jspade  # noqa: E402,F401  (configures Jittor first)
from jspade.data.datasets import DATASETS, build_dataset  # noqa: E402
from jspade.metrics import scores  # noqa: E402
from jspade.models.segmenter import Segmenter  # noqa: E402
from jspade.runtime import jt  # noqa: E402
from jittor import nn  # noqa: E402


class TrainError(RuntimeError):
    pass




def make_dataset(dataset, root, phase, size, label_nc=None, label_dir="labels", image_dir="imgs", seed=0):
    """A dataset of `dataset`'s layout at `root`, every sample resized to size = (W, H)."""
    width, height = size
    opts = dict(phase=phase, preprocess_mode="fixed", load_size=width, crop_size=width,
                aspect_ratio=width / height, no_instance=True, seed=seed)
    if label_nc is not None:
        opts["label_nc"] = label_nc
    if dataset == "folder":
        opts.update(label_dir=label_dir, image_dir=image_dir)
    ds = build_dataset(dataset, root, **opts)
    if not ds.has_images:
        raise TrainError(f"{root}: no photos found beside the labels (a segmenter learns photo -> label)")
    if ds.total_len == 0:
        raise TrainError(f"{root}: no samples")
    return ds


def dataset_confusion(segmenter, dataset, batch_size=8):
    """Confusion matrix (label_nc x label_nc) of the segmenter on a dataset's photos vs. its labels."""
    n = segmenter.label_nc
    confusion = np.zeros((n, n), np.int64)
    dataset.set_attrs(batch_size=batch_size, shuffle=False, drop_last=False, num_workers=0)
    for batch in dataset:
        pred = segmenter.predict(batch["image"], at_train_size=False)
        confusion += scores.confusion_matrix(pred, batch["label"].numpy()[:, 0], n)
    return confusion


def train(data, dataset="landscape", label_nc=None, size=(256, 192), epochs=10, batch_size=8, lr=1e-2,
          width=16, val=None, out=None, overwrite=False, seed=0, progress=True, log=print,
          label_dir="labels", image_dir="imgs"):
    """Train a Segmenter; returns (segmenter, history: list of per-epoch dicts).

    Writes the checkpoint to `out` (if given) atomically after each epoch; refuses, before any
    training, when `out` exists and not `overwrite`.
    """
    from tqdm import tqdm

    if out is not None and Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    if epochs < 1 or batch_size < 1 or lr <= 0 or width < 1:
        raise ValueError("epochs, batch_size, width and lr must be positive")
    jt.set_global_seed(seed)
    np.random.seed(seed)
    train_ds = make_dataset(dataset, data, "train", size, label_nc, label_dir, image_dir, seed)
    val_ds = None if val is None else make_dataset(dataset, val, "val", size, train_ds.label_nc,
                                                   label_dir, image_dir, seed)
    if train_ds.total_len < batch_size:
        batch_size = train_ds.total_len
    train_ds.set_attrs(batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0)
    nc = train_ds.label_nc
    segmenter = Segmenter(nc, width, size, dataset=dataset)
    net = segmenter.net
    params = [p for p in net.parameters() if not p.is_stop_grad()]
    optimizer = jt.optim.Adam(params, lr=lr)
    steps_per_epoch = len(train_ds)
    total_steps = epochs * steps_per_epoch
    warmup = min(20, total_steps // 10)
    log(f"training a width-{width} segmenter ({sum(p.numel() for p in params) / 1e6:.2f}M parameters) "
        f"on {train_ds.total_len} pairs of {data} at {size[0]}x{size[1]}, {nc} classes, "
        f"{epochs} epochs x {steps_per_epoch} batches of {batch_size}")

    history, step, start = [], 0, time.time()
    for epoch in range(1, epochs + 1):
        net.train()
        loss_sum = correct = counted = batches = 0
        bar = tqdm(train_ds, total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", disable=not progress,
                   leave=False)
        for batch in bar:
            # linear warm-up, then cosine decay to 2% of lr
            t = step / max(1, total_steps - 1)
            factor = (step + 1) / warmup if step < warmup else 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))
            optimizer.lr = lr * factor
            label = batch["label"][:, 0]
            label_np = label.numpy()
            valid = label_np < nc
            if not valid.any():  # all dontcare: the mean loss would be 0/0
                continue
            logits = net(batch["image"])
            loss = nn.cross_entropy_loss(logits, label, ignore_index=nc)
            optimizer.step(loss)
            # Run the update now: left pending, it is fused into the next graph, and some such
            # fusions trip a Jittor 1.3.11 code-generation bug ("member.size() <= var_num").
            jt.sync_all()
            pred = np.argmax(logits.numpy(), axis=1)
            correct += int((pred == label_np)[valid].sum())
            counted += int(valid.sum())
            loss_sum += float(loss.item())
            batches += 1
            step += 1
            bar.set_postfix(loss=f"{loss_sum / batches:.3f}", acc=f"{correct / max(counted, 1):.3f}")
        bar.close()
        record = {"epoch": epoch, "loss": loss_sum / max(batches, 1), "train_acc": correct / max(counted, 1),
                  "seconds": time.time() - start}
        line = f"epoch {epoch}/{epochs}: loss {record['loss']:.4f}, train acc {record['train_acc']:.4f}"
        if val_ds is not None:
            confusion = dataset_confusion(segmenter, val_ds, batch_size)
            record["val_acc"] = scores.pixel_accuracy(confusion)
            record["val_miou"] = scores.mean_iou(confusion)
            line += f", val (real photos) pixel acc {record['val_acc']:.4f}, mIoU {record['val_miou']:.4f}"
        history.append(record)
        log(line + f" [{record['seconds']:.0f}s]")
        if out is not None:
            segmenter.save(out, extra={"history": history})
    if val_ds is not None:
        log(f"ceiling (this segmenter on the real photos of {val}): pixel acc {history[-1]['val_acc']:.4f}, "
            f"mIoU {history[-1]['val_miou']:.4f}")
    if out is not None:
        log(f"wrote {out}")
    return segmenter, history


def build_parser():
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=cli.existing_path("folder"), required=True, metavar="DIR",
                    help="training data root, in the layout of --dataset (landscape: imgs/ + labels/)")
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="landscape",
                    help="on-disk layout, as jspade.data.datasets.build_dataset (default: %(default)s)")
    ap.add_argument("--label-nc", type=cli.int_at_least(1), metavar="N",
                    help="number of classes (default: the dataset's own, e.g. 29 for landscape; "
                         "required for --dataset folder)")
    ap.add_argument("--label-dir", default="labels",
                    help="--dataset folder only: label folder, relative to --data/--val (default: %(default)s)")
    ap.add_argument("--image-dir", default="imgs",
                    help="--dataset folder only: photo folder, relative to --data/--val (default: %(default)s)")
    ap.add_argument("--size", type=size_argument(8, 4096), default=(256, 192), metavar="WxH",
                    help="training resolution WIDTHxHEIGHT; prediction resizes any input to it and back "
                         "(default: 256x192)")
    ap.add_argument("--epochs", type=cli.int_at_least(1), default=10,
                    help="passes over the training data (default: %(default)s)")
    ap.add_argument("--batch-size", type=cli.int_at_least(1), default=8, help="pairs per step (default: %(default)s)")
    ap.add_argument("--lr", type=cli.float_within(0, low_open=True), default=1e-2,
                    help="peak Adam learning rate; short warm-up, then cosine decay (default: %(default)s)")
    ap.add_argument("--width", type=cli.int_at_least(1), default=16,
                    help="channels of the first stage (doubling per stage, x4 at 1/8): the model size knob "
                         "(default: %(default)s)")
    ap.add_argument("--val", type=cli.existing_path("folder"), metavar="DIR",
                    help="validation data (same layout; the landscape layout may be a folder with imgs/ + "
                         "labels/): pixel accuracy and mIoU on its REAL photos after every epoch (the "
                         "mask-accuracy ceiling)")
    ap.add_argument("--out", type=cli.output_file, default=Path("checkpoints/segmenter.pkl"), metavar="CKPT",
                    help="checkpoint file to write (default: %(default)s)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    ap.add_argument("--seed", type=cli.int_at_least(0), default=0,
                    help="random seed of initialisation, shuffling and flips (default: %(default)s)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return ap


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        ap.error(f"{args.out} exists; pass --overwrite to replace it")
    try:
        train(args.data, args.dataset, args.label_nc, args.size, args.epochs, args.batch_size, args.lr,
              args.width, args.val, args.out, args.overwrite, args.seed, not args.no_progress,
              label_dir=args.label_dir, image_dir=args.image_dir)
    except (TrainError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
