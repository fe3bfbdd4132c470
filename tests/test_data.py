"""Data pipeline: readers keep ids, datasets pair/transform/batch correctly, validation reports all faults."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from jspade.data.datasets import (ADE20KDataset, CityscapesDataset, CocoStuffDataset, FolderDataset,
                                  LandscapeDataset, build_dataset)
from jspade.data.readers import DataError, read_image, read_instance, read_label
from jspade.data.labels import LANDSCAPE_CLASSES, LANDSCAPE_PALETTE, colorize, make_palette
from jspade.data.transforms import PreprocessOptions, get_params, transform
from jspade.data.validate import validate_dataset
from jspade.runtime import jt

ROOT = Path(__file__).resolve().parents[1]


def save_label(path, ids, dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(ids, dtype)).save(path)


def save_photo(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, np.uint8)).save(path)


def make_landscape(root, stems, size=(32, 24), rng=None):
    """A tiny contest-layout dataset with random ids 0..28 and random photos."""
    rng = rng or np.random.default_rng(0)
    w, h = size
    for stem in stems:
        save_label(root / "labels" / f"{stem}.png", rng.integers(0, 29, (h, w)))
        save_photo(root / "imgs" / f"{stem}.png", rng.integers(0, 256, (h, w, 3)))
    return root


# ---- readers ---------------------------------------------------------------------------------

def test_shared_16bit_landscape_labels_keep_their_ids(landscape_sample):
    paths = sorted(landscape_sample.glob("*/labels/*.png"))
    assert paths
    for path in paths:
        ids = read_label(path)
        reference = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert ids.dtype == np.int32 and ids.shape == reference.shape == (768, 1024)
        np.testing.assert_array_equal(ids, reference.astype(np.int32))
        assert ids.max() <= 28
    assert set(np.unique(np.concatenate([read_label(p).ravel() for p in
                                         landscape_sample.glob("val/labels/*.png")]))) <= {0, 1}
    assert max(read_label(p).max() for p in landscape_sample.glob("train/labels/*.png")) > 1


def test_label_reader_formats(tmp_path):
    ids = np.arange(300 * 2, dtype=np.int32).reshape(20, 30) % 300
    save_label(tmp_path / "l16.png", ids, np.uint16)
    np.testing.assert_array_equal(read_label(tmp_path / "l16.png"), ids)
    palette_img = Image.fromarray((ids % 7).astype(np.uint8), mode="L").convert("P")
    palette_img.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    palette_img.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_label(tmp_path / "pal.png"), ids % 7)
    save_photo(tmp_path / "rgb.png", np.zeros((4, 4, 3)))
    with pytest.raises(DataError, match="rgb.png.*RGB"):
        read_label(tmp_path / "rgb.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    for reader in (read_label, read_image, read_instance):
        with pytest.raises(DataError, match="junk.png"):
            reader(tmp_path / "junk.png")
    with pytest.raises(DataError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    Image.fromarray(ids * 1000).save(tmp_path / "inst32.tif")  # 32-bit instance ids
    np.testing.assert_array_equal(read_instance(tmp_path / "inst32.tif"), ids * 1000)


def test_colorize():
    assert len({c.color for c in LANDSCAPE_CLASSES}) == 29
    label = np.array([[0, 1, 28, 29, 255, -1]])
    rgb = colorize(label)
    assert rgb.shape == (1, 6, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, :3], LANDSCAPE_PALETTE[[0, 1, 28]])
    assert not rgb[0, 3:].any()  # dontcare / invalid drawn black
    coco = make_palette(182)
    assert len(np.unique(coco, axis=0)) == 182 and coco.sum(1).min() > 0
    assert not colorize(np.array([[182, 255]]), label_nc=182).any()


# ---- transforms ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, expected", [
    ("resize_and_crop", (48, 48)), ("crop", (48, 48)), ("scale_width", (80, 48)),
    ("scale_width_and_crop", (48, 48)), ("scale_shortside", (133, 80)),
    ("scale_shortside_and_crop", (48, 48)), ("fixed", (48, 24)), ("none", (96, 64))])
def test_preprocess_mode_output_sizes(mode, expected):
    preprocess = PreprocessOptions(mode, load_size=80, crop_size=48, aspect_ratio=2.0)
    image = Image.new("RGB", (100, 60))
    params = get_params(preprocess, image.size, np.random.default_rng(0))
    assert transform(image, preprocess, params).size == expected


def test_params_reproducible_and_crop_too_large_is_an_error():
    preprocess = PreprocessOptions("resize_and_crop", load_size=286, crop_size=256)
    draws = [get_params(preprocess, (640, 480), np.random.default_rng(s)) for s in (1, 1, 2)]
    assert draws[0] == draws[1]
    assert get_params(PreprocessOptions(no_flip=True), (9, 9), np.random.default_rng(0))["flip"] is False
    with pytest.raises(DataError, match="smaller than crop_size"):
        get_params(PreprocessOptions("scale_width_and_crop", 286, 256), (1024, 768), np.random.default_rng(0))


# ---- datasets on the shared samples ---------------------------------------------------------

def test_landscape_batches_have_right_shapes_dtypes_ranges(landscape_sample):
    dataset = LandscapeDataset(landscape_sample / "train", crop_size=64)  # fixed 64x48
    assert dataset.total_len == 4 and dataset.has_images and not dataset.use_instance
    raw_ids = {p.stem: set(np.unique(read_label(p))) for p in (landscape_sample / "train/labels").glob("*.png")}
    batches = list(dataset.set_attrs(batch_size=2, shuffle=True))
    assert len(batches) == 2
    for batch in batches:
        assert set(batch) == {"label", "image", "stem"}
        assert isinstance(batch["label"], jt.Var) and batch["label"].shape == [2, 1, 48, 64]
        assert batch["label"].dtype == "int32"  # int64 items; Jittor stores int64 as int32
        assert batch["image"].shape == [2, 3, 48, 64] and batch["image"].dtype == "float32"
        image = batch["image"].numpy()
        assert -1.0 <= image.min() < -0.5 and 0.5 < image.max() <= 1.0
        label = batch["label"].numpy()
        for stem, ids in zip(batch["stem"], label):
            assert set(np.unique(ids)) <= raw_ids[stem]  # nearest resize never invents an id
    item = dataset[0]
    assert item["label"].dtype == np.int64 and item["image"].dtype == np.float32


def test_resize_and_crop_keeps_only_valid_ids(landscape_sample):
    dataset = LandscapeDataset(landscape_sample / "train", preprocess_mode="resize_and_crop",
                               load_size=100, crop_size=80)
    for i in range(dataset.total_len):
        item = dataset[i]
        raw = read_label(dataset.samples[i].label_path)
        assert item["label"].shape == (1, 80, 80) and item["image"].shape == (3, 80, 80)
        assert set(np.unique(item["label"])) <= set(np.unique(raw))


def test_landscape_labels_only_mode(landscape_sample):
    dataset = build_dataset("landscape", landscape_sample / "val" / "labels", phase="test", crop_size=32)
    assert not dataset.has_images
    item = dataset[0]
    assert set(item) == {"label", "stem"} and item["label"].shape == (1, 24, 32)
    batch = next(iter(dataset.set_attrs(batch_size=2)))
    assert "image" not in batch and len(batch["stem"]) == 2


def test_coco_stuff_dontcare_and_instances(coco_sample):
    # 'fixed' at the native 640x480 is an identity resize, so items can be compared pixel for pixel.
    dataset = CocoStuffDataset(coco_sample, phase="train", preprocess_mode="fixed", crop_size=640,
                               aspect_ratio=4 / 3, no_flip=True)
    assert dataset.semantic_nc == 182 + 1 + 1
    checked = 0
    for i, sample in enumerate(dataset.samples):
        raw = read_label(sample.label_path)
        if raw.shape != (480, 640):
            continue
        item = dataset[i]
        expected = np.where(raw == 255, 182, raw)
        np.testing.assert_array_equal(item["label"][0], expected)
        np.testing.assert_array_equal(item["instance"][0], read_instance(sample.instance_path))
        assert item["instance"].dtype == np.int32
        checked += (raw == 255).any()
    assert checked, "the sample should contain unlabeled (255) pixels"
    batch = next(iter(CocoStuffDataset(coco_sample, phase="val", load_size=72, crop_size=64).set_attrs(batch_size=3)))
    assert batch["instance"].shape == [3, 1, 64, 64] and batch["instance"].dtype == "int32"
    assert batch["label"].numpy().max() <= 182


# ---- datasets on temporary files -------------------------------------------------------------

def test_flip_applies_to_label_and_image_together(tmp_path):
    w, h = 16, 8
    ids = np.zeros((h, w)); ids[:, w // 2:] = 1  # left class 0, right class 1
    rgb = np.zeros((h, w, 3)); rgb[:, :w // 2] = (255, 0, 0); rgb[:, w // 2:] = (0, 0, 255)
    for i in range(12):
        save_label(tmp_path / "labels" / f"s{i}.png", ids)
        save_photo(tmp_path / "images" / f"s{i}.png", rgb)
    opts = dict(label_dir="labels", image_dir="images", label_nc=2, preprocess_mode="none")
    dataset = FolderDataset(tmp_path, **opts)
    flipped = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for i in range(12):
            item = dataset[i]
            label_flipped = item["label"][0, 0, 0] == 1
            image_flipped = item["image"][2, 0, 0] > 0  # blue on the left
            assert label_flipped == image_flipped
            flipped.append(label_flipped)
    assert any(flipped) and not all(flipped)
    for no_flip_opts in (dict(no_flip=True), dict(phase="val")):
        never = FolderDataset(tmp_path, **opts, **no_flip_opts)
        assert all(never[i]["label"][0, 0, 0] == 0 for i in range(12))


def test_items_reproducible_by_seed_and_epoch(tmp_path):
    make_landscape(tmp_path, [f"a{i}" for i in range(3)], size=(40, 30))
    make = lambda seed: LandscapeDataset(tmp_path, preprocess_mode="crop", crop_size=16, seed=seed)  # noqa: E731
    a, b = make(0), make(0)
    np.testing.assert_array_equal(a[1]["image"], b[1]["image"])
    crops = {make(seed)[1]["label"].tobytes() for seed in range(6)}
    assert len(crops) > 1
    by_epoch = set()
    for epoch in range(6):  # a new epoch draws new crops
        a.set_epoch(epoch)
        by_epoch.add(a[1]["label"].tobytes())
    assert len(by_epoch) > 1


def test_subset_restricts_and_rejects_unknown_stems(tmp_path):
    make_landscape(tmp_path / "data", ["a", "b", "c"])
    subset = tmp_path / "subset.txt"
    subset.write_text("# holdout\nc\n\na   # inline comment\n")
    dataset = LandscapeDataset(tmp_path / "data", subset=subset, crop_size=32)
    assert [s.stem for s in dataset.samples] == ["a", "c"] and dataset.total_len == 2
    subset.write_text("a\nnope\n")
    with pytest.raises(DataError, match="nope"):
        LandscapeDataset(tmp_path / "data", subset=subset)


def test_missing_pair_and_bad_id_raise_naming_stem_file_and_id(tmp_path):
    make_landscape(tmp_path, ["good", "lonely"])
    (tmp_path / "imgs" / "lonely.png").unlink()
    with pytest.raises(DataError, match="lonely"):
        LandscapeDataset(tmp_path)
    save_photo(tmp_path / "imgs" / "lonely.png", np.zeros((24, 32, 3)))
    save_label(tmp_path / "labels" / "lonely.png", np.full((24, 32), 41))
    dataset = LandscapeDataset(tmp_path, crop_size=32)
    with pytest.raises(DataError, match=r"lonely\.png.*41"):
        dataset[1]


def test_ade20k_shift_and_cityscapes_pairing(tmp_path):
    ade = tmp_path / "ade"
    save_label(ade / "annotations" / "training" / "ADE_train_1.png", [[0, 1, 150]])
    save_photo(ade / "images" / "training" / "ADE_train_1.jpg", np.zeros((1, 3, 3)))
    item = ADE20KDataset(ade, preprocess_mode="fixed", crop_size=3, aspect_ratio=3.0, no_flip=True)[0]
    assert item["label"].tolist() == [[[150, 0, 149]]]  # raw 0 (unlabeled) -> dontcare 150
    city = tmp_path / "city"
    for stem in ("aachen_000000_000019", "bonn_000001_000002"):
        town = stem.split("_")[0]
        save_label(city / "gtFine" / "train" / town / f"{stem}_gtFine_labelIds.png", np.full((8, 16), 26))
        save_label(city / "gtFine" / "train" / town / f"{stem}_gtFine_instanceIds.png",
                   np.full((8, 16), 26001), np.uint16)
        save_label(city / "gtFine" / "train" / town / f"{stem}_gtFine_color.png", np.zeros((8, 16)))
        save_photo(city / "leftImg8bit" / "train" / town / f"{stem}_leftImg8bit.png", np.zeros((8, 16, 3)))
    dataset = CityscapesDataset(city, crop_size=16)
    assert [s.stem for s in dataset.samples] == ["aachen_000000_000019", "bonn_000001_000002"]
    item = dataset[0]
    assert item["label"].shape == (1, 8, 16) and (item["instance"] == 26001).all()


# ---- validation ------------------------------------------------------------------------------

def broken_dataset(root):
    make_landscape(root, ["ok", "no_image", "corrupt", "bad_id", "wrong_size"])
    (root / "imgs" / "no_image.png").unlink()
    (root / "imgs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    save_label(root / "labels" / "bad_id.png", np.full((24, 32), 41))
    save_photo(root / "imgs" / "wrong_size.png", np.zeros((20, 30, 3)))
    return root


def test_validate_reports_every_problem(tmp_path):
    problems = validate_dataset("landscape", broken_dataset(tmp_path))
    text = "\n".join(map(str, problems))
    assert len(problems) == 4, text
    # each problem also carries its kind, set where it is found (curation sorts on it, not on the text)
    assert any(p.where == "no_image" and "missing pair" in p.reason and p.kind == "missing_pair" for p in problems)
    assert any(p.where.endswith("corrupt.png") and "cannot read" in p.reason and p.kind == "unreadable"
               for p in problems)
    assert any(p.where.endswith("bad_id.png") and "41" in p.reason and p.kind == "bad_class_id" for p in problems)
    assert any(p.where.endswith("wrong_size.png") and "30x20" in p.reason and p.kind == "size_mismatch"
               for p in problems)
    assert validate_dataset("landscape", tmp_path / "nowhere")  # a missing root is a problem, not a crash


def test_validate_cli_exit_codes(tmp_path):
    script = str(ROOT / "scripts" / "validate_data.py")
    bad = subprocess.run([sys.executable, script, "--data", str(broken_dataset(tmp_path / "bad"))],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "bad_id.png" in bad.stdout and "no_image" in bad.stdout
    good = subprocess.run([sys.executable, script, "--data", str(make_landscape(tmp_path / "good", ["x"]))],
                          capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
