"""Training the segmentation network behind mask accuracy on (real photo -> label map) pairs
(`scripts/train_segmenter.py` is its command line).

Every sample is resized (photo bicubic, label nearest) to `size`, training photos are flipped at
random, the loss is pixel-wise cross-entropy with the dontcare id (= label_nc) ignored. With `val`,
pixel accuracy and mIoU on the REAL validation photos are measured after each epoch: the ceiling
mask accuracy a generator can reach with this segmenter.
"""
import math
import time
from pathlib import Path

import numpy as np

from jspade.runtime import jt
from jittor import nn

from jspade.data.datasets import build_dataset
from jspade.metrics import scores
from jspade.models.segmenter import Segmenter


class TrainError(RuntimeError):
    """The data cannot train a segmenter (no photos, no samples); the message says why."""


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
