"""Contest score formulas, style similarity (colour-histogram correlation) and mask-accuracy metrics."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import run_script
from jspade.metrics import scores
from jspade.metrics.evaluation import EvaluationInputs, evaluate


# --- formulas -----------------------------------------------------------------------------------

def test_score_formulas_by_hand():
    # 2022: 0.9 * (6/10*0.5 + (100-20)/100*0.5) = 0.9 * (0.3 + 0.4)
    assert scores.score_2022(0.9, 6.0, 20.0) == pytest.approx(0.63)
    # 2023: 0.9 * (0.5*0.2 + (0.6*0.5+0.5)*0.3 + 0.8*0.5) = 0.9 * (0.1 + 0.24 + 0.4); no /10 on aesthetic
    assert scores.score_2023(0.9, 0.5, 0.6, 20.0) == pytest.approx(0.666)
    assert scores.score_2023(1.0, 5.0, 1.0, 0.0) == pytest.approx(5 * 0.2 + 0.3 + 0.5)


def test_fid_above_100_is_clamped():
    assert scores.fid_term(0) == 1 and scores.fid_term(100) == 0 and scores.fid_term(250) == 0
    assert scores.score_2022(1.0, 10.0, 250.0) == scores.score_2022(1.0, 10.0, 100.0) == pytest.approx(0.5)
    assert scores.score_2023(1.0, 0.0, 0.0, 1e6) == pytest.approx(0.15)


# --- style similarity -------------------------------------------------------------------------

@pytest.fixture
def two_photos(landscape_sample):
    paths = sorted((landscape_sample / "train" / "imgs").glob("*.jpg"))[:2]
    return [np.asarray(Image.open(p).convert("RGB").resize((256, 192))) for p in paths]


def test_histogram_correlation_of_an_image_with_itself_is_one(two_photos):
    photo = two_photos[0]
    assert scores.style_similarity(photo, photo) == pytest.approx(1.0)
    # Size does not matter: a histogram scaled by a constant correlates perfectly.
    assert scores.style_similarity(photo, np.tile(photo, (2, 1, 1))) == pytest.approx(1.0)


def test_a_differently_coloured_image_is_less_similar(two_photos):
    photo, other = two_photos
    bluish = photo.copy()
    bluish[..., 2] = np.clip(bluish[..., 2].astype(int) + 80, 0, 255)
    bluish[..., 0] = bluish[..., 0] // 2
    assert scores.style_similarity(photo, bluish) < 0.9
    assert scores.style_similarity(photo, other) < 1.0
    uniform = np.full_like(photo, 128)
    assert scores.style_similarity(photo, uniform) < 0.2


def test_histogram_correlation_agrees_with_opencv(two_photos):
    photo, other = two_photos
    for bins in (256, 32):
        for channel in range(3):
            ours = scores.histogram_correlation(scores.color_histograms(photo, bins)[channel],
                                                scores.color_histograms(other, bins)[channel])
            hist = [cv2.calcHist([np.ascontiguousarray(im[..., channel])], [0], None, [bins], [0, 256])
                    for im in (photo, other)]
            assert ours == pytest.approx(cv2.compareHist(hist[0], hist[1], cv2.HISTCMP_CORREL), abs=1e-6)


def test_style_pairs_by_name_and_from_label_to_img(tmp_path):
    fake, refs = tmp_path / "fake", tmp_path / "refs"
    fake.mkdir(), refs.mkdir()
    colours = {"a": (200, 30, 30), "b": (30, 200, 30)}
    for stem, colour in colours.items():
        image = np.zeros((16, 16, 3), np.uint8)
        image[:8] = colour
        Image.fromarray(image).save(fake / f"{stem}.png")
        Image.fromarray(image).save(refs / f"{stem}.png")
    pairs = scores.style_pairs_by_name(fake, refs)
    assert [(a.name, b.name) for a, b in pairs] == [("a.png", "a.png"), ("b.png", "b.png")]
    assert scores.mean_style_similarity(pairs) == pytest.approx(1.0)
    # label_to_img.json crosses them over: a's reference is b's image.
    mapping = tmp_path / "label_to_img.json"
    mapping.write_text(json.dumps({"a.png": "b.png", "b.png": "a.png"}))
    crossed = scores.style_pairs_from_mapping(fake, mapping, refs)
    assert [(a.name, b.name) for a, b in crossed] == [("a.png", "b.png"), ("b.png", "a.png")]
    assert scores.mean_style_similarity(crossed) < 1.0


# --- segmentation metrics -----------------------------------------------------------------------

def test_confusion_matrix_accuracy_and_miou_by_hand():
    label = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 1]])
    confusion = scores.confusion_matrix(pred, label, 3)
    np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 3, 0], [1, 0, 1]])  # 255 ignored
    assert scores.pixel_accuracy(confusion) == pytest.approx(5 / 7)
    # IoU: class 0: 1/(2+2-1)=1/3, class 1: 3/(3+4-3)=3/4, class 2: 1/(2+1-1)=1/2
    assert scores.mean_iou(confusion) == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    # A class absent from labels and predictions does not count.
    assert scores.mean_iou(scores.confusion_matrix(pred, label, 5)) == pytest.approx(scores.mean_iou(confusion))


def test_mask_accuracy_with_a_stub_segmenter_on_16bit_labels(landscape_sample, tmp_path):
    label_dir = landscape_sample / "val" / "labels"
    labels = {p.stem: np.asarray(Image.open(p)) for p in sorted(label_dir.glob("*.png"))}
    for stem in labels:  # outputs at a smaller size than the labels
        Image.new("RGB", (64, 48)).save(tmp_path / f"{stem}.jpg")
    everything_is_sky = lambda image: np.ones(image.shape[:2], np.int64)  # noqa: E731
    accuracy, miou = scores.mask_accuracy(tmp_path, label_dir, everything_is_sky, 29, with_miou=True)
    all_pixels = np.concatenate([label.ravel() for label in labels.values()])
    assert accuracy == pytest.approx(np.mean(all_pixels == 1))
    assert 0 < accuracy < 1 and miou == pytest.approx(accuracy / 2)  # classes 0 (IoU 0) and 1
    with pytest.raises(scores.SegmenterUnavailable):
        scores.load_segmenter("segmenter.pkl")


# --- the evaluation (no Inception needed without real images) -----------------------------------

def test_evaluate_reports_unavailable_metrics(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    for stem in ("x", "y"):
        Image.new("RGB", (16, 16), (90, 120, 200)).save(fake / f"{stem}.png")
    metrics, reasons = evaluate(EvaluationInputs(fake, references=fake, aesthetic=6, mask_accuracy=0.9,
                                                 labels=tmp_path))
    assert metrics["style_similarity"] == pytest.approx(1.0)
    assert metrics["aesthetic"] == 6 and metrics["mask_accuracy"] == 0.9
    assert metrics["fid"] is None and "--real" in reasons["fid"]
    assert metrics["score_2022"] is None and reasons["score_2022"] == "needs fid"

    metrics, reasons = evaluate(EvaluationInputs(fake, labels=tmp_path, segmenter=tmp_path / "seg.pkl"))
    assert "segmentation network" in reasons["mask_accuracy"]
    assert "only from --aesthetic" in reasons["aesthetic"]
    assert reasons["score_2023"] == "needs mask_accuracy, aesthetic, style_similarity, fid"


def test_evaluate_script_prints_the_table_and_writes_json(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    Image.new("RGB", (16, 16), (90, 120, 200)).save(fake / "x.png")
    out = tmp_path / "eval.json"
    done = run_script("evaluate", "--fake", fake, "--references", fake, "--aesthetic", "6", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "unavailable: needs --real" in done.stdout and "style_similarity  1.0000" in done.stdout
    report = json.loads(out.read_text())
    assert report["metrics"]["aesthetic"] == 6 and report["unavailable"]["score_2022"] == "needs mask_accuracy, fid"
