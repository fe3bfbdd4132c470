"""The segmentation network behind mask accuracy: training on synthetic landscapes, held-out accuracy
against the true vs. shuffled labels, checkpoint round trip, overwrite protection, and
`scores.mask_accuracy` / the evaluation against a computation by hand.

One small segmenter is trained once per module (150 synthetic 96x72 pairs, 6 epochs) through
`jspade.train.segmenter.train` (what scripts/train_segmenter.py runs).
"""
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import run_script
from jspade.checkpoint import CheckpointError
from jspade.data.synthetic import write_synthetic_dataset
from jspade.metrics import scores
from jspade.metrics.evaluation import EvaluationInputs, evaluate
from jspade.models.segmenter import Segmenter
from jspade.train.segmenter import train as train_segmenter

SIZE = (96, 72)
EPOCHS = 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmenter")
    write_synthetic_dataset(root / "train", 150, SIZE, seed=0)
    write_synthetic_dataset(root / "val", 30, SIZE, seed=1)  # other seed: scenes never seen
    # The held-out photos scored against OTHER photos' labels (a cyclic shift of the stems).
    stems = sorted(p.stem for p in (root / "val" / "labels").glob("*.png"))
    (root / "shuffled").mkdir()
    for stem, other in zip(stems, stems[1:] + stems[:1]):
        shutil.copy(root / "val" / "labels" / f"{other}.png", root / "shuffled" / f"{stem}.png")
    lines = []
    ckpt = root / "seg.pkl"
    segmenter, history = train_segmenter(
        root / "train", "landscape", size=SIZE, epochs=EPOCHS, batch_size=8, lr=1e-2, width=16,
        val=root / "val", out=ckpt, progress=False, log=lines.append)
    return dict(root=root, ckpt=ckpt, segmenter=segmenter, history=history, log=lines)


def test_training_reports_each_epoch_and_writes_the_checkpoint(trained):
    assert len(trained["history"]) == EPOCHS
    assert sum("val (real photos) pixel acc" in line for line in trained["log"]) == EPOCHS
    assert trained["history"][-1]["loss"] < trained["history"][0]["loss"]
    payload = Segmenter.read(trained["ckpt"])
    assert payload["format"] == "jspade-segmenter-1"
    assert payload["config"]["label_nc"] == 29 and payload["config"]["size"] == list(SIZE)
    assert not list(trained["ckpt"].parent.glob(".*.tmp*"))  # atomic write left no temporary


def test_held_out_accuracy_is_high_and_drops_with_shuffled_labels(trained):
    root, seg = trained["root"], trained["segmenter"]
    accuracy, miou = scores.mask_accuracy(root / "val" / "imgs", root / "val" / "labels", seg, 29, with_miou=True)
    shuffled, shuffled_miou = scores.mask_accuracy(root / "val" / "imgs", root / "shuffled", seg, 29, with_miou=True)
    # Measured: 0.91 held-out (mIoU 0.47) vs. 0.47 (mIoU 0.09) shuffled after 6 epochs (0.92 after 10).
    # Shuffled stays well above chance: every landscape has sky on top and ground below.
    print(f"held-out {accuracy:.4f} (mIoU {miou:.4f}), shuffled {shuffled:.4f} (mIoU {shuffled_miou:.4f})")
    assert accuracy >= 0.85, accuracy
    assert shuffled <= 0.65, shuffled
    assert accuracy - shuffled >= 0.25
    assert miou > 2 * shuffled_miou
    # The script's validation (same photos at the same size, batched) gives the same number.
    # (batched: the convolutions may round differently, so a pixel or two may differ)
    assert trained["history"][-1]["val_acc"] == pytest.approx(accuracy, abs=1e-3)


def test_checkpoint_round_trip_gives_identical_predictions(trained, tmp_path):
    seg = trained["segmenter"]
    loaded = scores.load_segmenter(trained["ckpt"])
    assert isinstance(loaded, Segmenter) and loaded.config == seg.config
    images = np.random.default_rng(0).uniform(-1, 1, (3, 3, SIZE[1], SIZE[0])).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(images), seg.predict(images))
    photo = np.asarray(Image.open(next((trained["root"] / "val" / "imgs").iterdir())).convert("RGB"))
    np.testing.assert_array_equal(loaded(photo), seg(photo))

    # Loading is strict: a missing weight or another width is an error, not a silent partial load.
    payload = Segmenter.read(trained["ckpt"])
    del payload["weights"][sorted(payload["weights"])[0]]
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="missing"):
        Segmenter.load(broken)
    other = tmp_path / "width8.pkl"
    Segmenter(29, width=8, size=SIZE).save(other)
    payload = Segmenter.read(other)
    payload["config"]["width"] = 16
    other.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        Segmenter.load(other)
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError):
        scores.load_segmenter(tmp_path / "junk.pkl")
    with pytest.raises(scores.SegmenterUnavailable):
        scores.load_segmenter(tmp_path / "absent.pkl")


def test_predict_returns_ids_at_any_input_size(trained):
    seg = trained["segmenter"]
    images = np.random.default_rng(1).uniform(-1, 1, (2, 3, 50, 70)).astype(np.float32)
    for at_train_size in (True, False):  # resized to 96x72 and back / run at 50x70 (padded to 56x72)
        ids = seg.predict(images, at_train_size=at_train_size)
        assert ids.shape == (2, 50, 70) and ids.dtype == np.int64
        assert ids.min() >= 0 and ids.max() < 29


def test_refuses_to_overwrite_a_checkpoint(trained, tmp_path):
    out = tmp_path / "seg.pkl"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        train_segmenter(trained["root"] / "val", size=SIZE, epochs=1, out=out, progress=False)
    done = run_script("train_segmenter", "--data", trained["root"] / "val", "--size", "96x72", "--out", out)
    assert done.returncode == 2 and "--overwrite" in done.stderr
    assert out.read_bytes() == b"precious"
    # With overwrite it trains (one short epoch on the 30 held-out pairs) and replaces the file.
    train_segmenter(trained["root"] / "val", size=SIZE, epochs=1, out=out, overwrite=True, progress=False,
                    log=lambda line: None)
    assert Segmenter.load(out).size == SIZE


def test_mask_accuracy_equals_a_computation_by_hand(trained, tmp_path):
    """A folder of outputs (here at half the label size, to exercise the resize) + label maps."""
    seg, val = trained["segmenter"], trained["root"] / "val"
    fake = tmp_path / "fake"
    fake.mkdir()
    half = (SIZE[0] // 2, SIZE[1] // 2)
    for path in sorted((val / "imgs").glob("*.jpg"))[:12]:
        Image.open(path).convert("RGB").resize(half, Image.BICUBIC).save(fake / f"{path.stem}.png")
    accuracy, miou = scores.mask_accuracy(fake, val / "labels", seg, 29, with_miou=True)

    # By hand: each output resized (bilinear) to its label's size, scaled to [-1, 1], segmented.
    stems = sorted(p.stem for p in fake.glob("*.png"))
    labels = np.stack([np.asarray(Image.open(val / "labels" / f"{s}.png")) for s in stems])
    prediction = []
    for stem in stems:
        rgb = np.asarray(Image.open(fake / f"{stem}.png").resize(SIZE, Image.BILINEAR))
        prediction.append(seg.predict(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 127.5 - 1.0)[0])
    prediction = np.stack(prediction)
    assert accuracy == pytest.approx(np.mean(prediction == labels), abs=1e-12)
    confusion = scores.confusion_matrix(prediction, labels, 29)
    assert miou == pytest.approx(scores.mean_iou(confusion), abs=1e-12)

    # The evaluation reports the same numbers (no real images: FID and the scores are unavailable).
    values, reasons = evaluate(EvaluationInputs(fake, labels=val / "labels", segmenter=trained["ckpt"]))
    assert values["mask_accuracy"] == pytest.approx(accuracy)
    assert values["mask_miou"] == pytest.approx(miou)
    assert reasons["score_2022"] == "needs aesthetic, fid"
