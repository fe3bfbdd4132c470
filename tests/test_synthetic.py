"""Synthetic landscapes: deterministic, valid contest ids, photos predictable from labels, loadable."""
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from jspade.data.datasets import LandscapeDataset
from jspade.data.labels import LANDSCAPE_IDS, LANDSCAPE_LABEL_NC
from jspade.data.synthetic import generate_scene, scene_rng, write_synthetic_dataset
from jspade.data.validate import validate_dataset

ROOT = Path(__file__).resolve().parents[1]


def scenes(seed, n, size=(128, 96)):
    return [generate_scene(scene_rng(seed, i), *size) for i in range(n)]


def test_deterministic_by_seed():
    a, b, c = scenes(7, 5), scenes(7, 5), scenes(8, 5)
    for (la, pa), (lb, pb) in zip(a, b):
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(pa, pb)
    assert any(not np.array_equal(la, lc) for (la, _), (lc, _) in zip(a, c))


def test_valid_ids_shapes_and_variety():
    used = set()
    for label, photo in scenes(0, 60, size=(80, 64)):
        assert label.shape == (64, 80) and label.dtype == np.uint8
        assert photo.shape == (64, 80, 3) and photo.dtype == np.uint8
        ids = set(np.unique(label).tolist())
        assert ids <= set(range(LANDSCAPE_LABEL_NC))
        assert LANDSCAPE_IDS["sky"] in ids and len(ids) >= 3  # a landscape, not a flat image
        used |= ids
    for name in ("mountain", "sky", "tree", "grass", "sand", "sea", "lake", "river"):
        assert LANDSCAPE_IDS[name] in used, name


def test_photo_colours_follow_labels():
    sums, counts = {}, {}
    for label, photo in scenes(1, 80):
        for c in np.unique(label):
            mask = label == c
            sums[c] = sums.get(c, 0) + photo[mask].astype(np.float64).sum(0)
            counts[c] = counts.get(c, 0) + mask.sum()
    means = {c: sums[c] / counts[c] for c in sums if counts[c] > 2000}
    assert len(means) >= 8
    names = {v: k for k, v in LANDSCAPE_IDS.items()}
    for a in means:
        for b in means:
            if a < b:  # every frequent class has its own mean colour
                assert np.linalg.norm(means[a] - means[b]) > 12, (names[a], names[b])
    sky, tree = means[LANDSCAPE_IDS["sky"]], means[LANDSCAPE_IDS["tree"]]
    assert sky[2] > sky[0] and tree[1] > tree[2] and tree.sum() < sky.sum()  # blue sky, dark green trees


def test_writes_a_loadable_contest_dataset(tmp_path):
    stems = write_synthetic_dataset(tmp_path, n=6, size=(64, 48), seed=3)
    assert len(stems) == 6 and not list(tmp_path.rglob("*.tmp*"))
    label_file = Image.open(tmp_path / "labels" / f"{stems[0]}.png")
    assert label_file.mode == "L" and label_file.size == (64, 48)
    assert (tmp_path / "imgs" / f"{stems[0]}.jpg").is_file()
    np.testing.assert_array_equal(np.asarray(label_file), scenes(3, 1, (64, 48))[0][0])
    assert validate_dataset("landscape", tmp_path, crop_size=64) == []
    dataset = LandscapeDataset(tmp_path, crop_size=64).set_attrs(batch_size=4, shuffle=True)
    batch = next(iter(dataset))
    assert batch["label"].shape == [4, 1, 48, 64] and batch["image"].shape == [4, 3, 48, 64]
    assert batch["label"].numpy().max() < LANDSCAPE_LABEL_NC


def test_cli_writes_dataset_and_preview(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_synthetic.py"), "--out", str(tmp_path / "d"),
                             "--n", "3", "--size", "48x32", "--seed", "2", "--preview", str(tmp_path / "p.png"),
                             "--preview-n", "4"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "d" / "imgs").glob("*.jpg"))) == 3
    assert Image.open(tmp_path / "p.png").size[0] > 2 * 48
