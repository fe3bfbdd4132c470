"""Data curation (jspade/curation/, scripts/clean_dataset.py) on a synthetic dataset with
planted defects: each defect is caught for the right reason, the clean scenes are kept, the
selections load as training subsets, runs are deterministic and the data folder is never touched.

Planted (beside 40 clean synthetic scenes at 128x96):
  gray_photo              the photo turned gray                       -> grayscale (both selections)
  backlit_photo           land x0.2, sky x1.25                        -> backlit (Selection II only)
  green_sky               the photo's sky repainted grass-green       -> color_mismatch (class sky)
  synth_0_000005_copy     byte copy of synth_0_000005 (photo + label) -> duplicate_photo/_label
  neardup_0..4            one label with a few pixels changed, 5 photos -> one group, K=2 in Selection II
  broken_jpeg             the photo truncated                         -> unreadable
  orphan_label            a label without photo                       -> missing_pair
  bad_ids                 a label with id 40                          -> bad_class_id
  small_photo             a 120x90 photo for a 128x96 label           -> size_mismatch
"""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_script
from jspade.curation import CurationOptions, curate
from jspade.curation.checks import backlight_score, clipped_fraction, color_channels, colorfulness, contrast
from jspade.curation.near_duplicates import find_near_duplicate_groups, groups_around_centres
from jspade.curation.reasons import REASON, REASONS
from jspade.curation.report import THUMB
from jspade.data.readers import PROBLEM_KINDS
from jspade.data.datasets import build_dataset, read_subset
from jspade.data.labels import LANDSCAPE_IDS
from jspade.data.synthetic import PHOTO_COLORS, generate_label, render_photo, scene_rng, write_synthetic_dataset
from jspade.train.segmenter import train as train_segmenter

SIZE = (128, 96)
SKY = LANDSCAPE_IDS["sky"]
CLEAN = 40
COPIED = "synth_0_000005"
SECOND_ONLY = {"backlit", "clipped_highlights", "low_contrast", "near_duplicate"}


def label_agreement(a, b):
    """Fraction of pixels where two equally sized label maps have the same class."""
    return float(np.mean(np.asarray(a) == np.asarray(b)))


def save_pair(root, stem, label, photo=None, quality=92):
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(label, np.uint8), mode="L").save(root / "labels" / f"{stem}.png")
    if photo is not None:
        Image.fromarray(np.asarray(photo, np.uint8), mode="RGB").save(root / "imgs" / f"{stem}.jpg", quality=quality)


def skyful_scene(index):
    """Scene `index` of seed 7 or the next one whose sky covers at least 30% (planted defects need it)."""
    while True:
        rng = scene_rng(7, index)
        label, horizon = generate_label(rng, *SIZE)
        if (label == SKY).mean() >= 0.3:
            return label, render_photo(label, rng, horizon), horizon
        index += 1


def plant_defects(root):
    w, h = SIZE
    label, photo, _ = skyful_scene(0)
    gray = (photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().clip(0, 255)
    save_pair(root, "gray_photo", label, np.repeat(gray[..., None], 3, axis=2))

    label, photo, _ = skyful_scene(10)
    sky = (label == SKY)[..., None]
    backlit = np.where(sky, photo.astype(np.float32) * 1.25, photo.astype(np.float32) * 0.2)
    save_pair(root, "backlit_photo", label, backlit.clip(0, 255))

    label, photo, _ = skyful_scene(20)
    texture = 1 + 0.1 * np.random.default_rng(1).standard_normal((h, w, 1))
    green = np.asarray(PHOTO_COLORS["grass"], np.float32) * texture
    save_pair(root, "green_sky", label, np.where((label == SKY)[..., None], green, photo).clip(0, 255))

    for folder, suffix in (("labels", ".png"), ("imgs", ".jpg")):
        shutil.copy(root / folder / f"{COPIED}{suffix}", root / folder / f"{COPIED}_copy{suffix}")

    label, _, horizon = skyful_scene(30)
    rng = np.random.default_rng(2)
    for i in range(5):
        variant = label.copy()
        ys, xs = rng.integers(0, h, 20), rng.integers(0, w, 20)
        variant[ys, xs] = LANDSCAPE_IDS["rock"]
        save_pair(root, f"neardup_{i}", variant, render_photo(variant, scene_rng(8, i), horizon))

    label, photo, _ = skyful_scene(40)
    save_pair(root, "broken_jpeg", label, photo)
    data = (root / "imgs" / "broken_jpeg.jpg").read_bytes()
    (root / "imgs" / "broken_jpeg.jpg").write_bytes(data[:len(data) // 2])
    save_pair(root, "orphan_label", label)
    bad = label.copy()
    bad[:4, :4] = 40
    save_pair(root, "bad_ids", bad, photo)
    save_pair(root, "small_photo", label, np.asarray(Image.fromarray(photo).resize((120, 90))))


def tree_hash(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
            digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    base = tmp_path_factory.mktemp("curation")
    data = base / "data"
    clean = write_synthetic_dataset(data, CLEAN, SIZE, seed=0)
    plant_defects(data)
    before = tree_hash(data)
    out = base / "out"
    report = curate(data, out, CurationOptions(progress=False))
    return dict(base=base, data=data, out=out, clean=clean, report=report, before=before)


def reasons_of(report, stem):
    return report["rejected"].get(stem, {}).get("reasons", [])


def selections(out):
    return read_subset(out / "selection1.txt"), read_subset(out / "selection2.txt")


@pytest.mark.parametrize("stem, reason, second_only", [
    ("gray_photo", "grayscale", False),
    ("backlit_photo", "backlit", True),
    ("green_sky", "color_mismatch", False),
    (f"{COPIED}_copy", "duplicate_photo", False),
    (f"{COPIED}_copy", "duplicate_label", False),
    ("broken_jpeg", "unreadable", False),
    ("orphan_label", "missing_pair", False),
    ("bad_ids", "bad_class_id", False),
    ("small_photo", "size_mismatch", False),
])
def test_each_planted_defect_is_caught_for_its_reason(curated, stem, reason, second_only):
    report = curated["report"]
    s1, s2 = selections(curated["out"])
    assert reason in reasons_of(report, stem), report["rejected"].get(stem)
    assert stem not in s2
    assert (stem in s1) == second_only
    entry = report["rejected"][stem]
    assert entry["excluded_from"] == (["selection2"] if second_only else ["selection1", "selection2"])


def test_planted_defects_are_not_blamed_on_other_checks(curated):
    report = curated["report"]
    assert reasons_of(report, "gray_photo") == ["grayscale"]
    assert set(reasons_of(report, "backlit_photo")) <= SECOND_ONLY
    assert reasons_of(report, "green_sky") == ["color_mismatch"]
    assert report["rejected"]["green_sky"]["details"]["color_mismatch"]["class"] == "sky"
    assert report["rejected"][f"{COPIED}_copy"]["details"]["duplicate_photo"]["duplicate_of"] == COPIED


def test_clean_scenes_are_kept_in_both_selections(curated):
    s1, s2 = selections(curated["out"])
    report = curated["report"]
    false_positives = {s: report["rejected"][s] for s in curated["clean"] if s in report["rejected"]}
    assert not false_positives
    assert set(curated["clean"]) <= set(s2) and set(s2) <= set(s1)
    # With margin: the clean scenes' scores are far from every threshold.
    rows = {r["stem"]: r for r in _csv(curated["out"] / "scores.csv")}
    options = CurationOptions()
    for stem in curated["clean"]:
        r = rows[stem]
        assert float(r["colorfulness"]) > 4 * options.gray_threshold
        assert float(r["color_outlier_fraction"]) < options.color_outlier_fraction / 2
        assert r["backlight_ratio"] == "" or float(r["backlight_ratio"]) > 1.3 * options.backlight_ratio
        assert float(r["clipped_fraction"]) < options.clipped_fraction / 2
        assert float(r["contrast"]) > 1.3 * options.min_contrast


def _csv(path):
    import csv
    with open(path) as f:
        return list(csv.DictReader(f))


def test_near_duplicate_group_is_reduced_to_k_in_selection_two(curated):
    report = curated["report"]
    s1, s2 = selections(curated["out"])
    members = [f"neardup_{i}" for i in range(5)]
    groups = report["near_duplicates"]["groups"]
    assert [g["members"] for g in groups] == [members]
    keep = CurationOptions().near_dup_keep
    assert len(groups[0]["kept"]) == keep
    assert set(members) <= set(s1)
    assert sorted(m for m in members if m in s2) == groups[0]["kept"]
    for m in members:
        if m not in groups[0]["kept"]:
            assert reasons_of(report, m) == ["near_duplicate"]
            assert report["rejected"][m]["details"]["near_duplicate"]["group"] == groups[0]["id"]
    # The kept ones are the most typical: their distance to the group median is the smallest.
    distance = groups[0]["typicality_distance"]
    assert max(distance[m] for m in groups[0]["kept"]) <= min(distance[m] for m in members
                                                              if m not in groups[0]["kept"])
    assert report["counts"]["per_reason"]["near_duplicate"] == 5 - keep


def test_selections_load_as_training_subsets(curated):
    data, out = curated["data"], curated["out"]
    s1, s2 = selections(out)
    for name, stems in (("selection1.txt", s1), ("selection2.txt", s2)):
        ds = build_dataset("landscape", data, subset=out / name)
        assert [s.stem for s in ds.samples] == stems  # natural order, as the file lists them
        assert ds[0]["image"].shape[0] == 3
    report = curated["report"]
    assert report["counts"]["selection1"] == len(s1) == CLEAN + 5 + 1  # clean + near-dups + backlit
    assert report["counts"]["selection2"] == len(s2) == CLEAN + CurationOptions().near_dup_keep


def test_report_contact_sheets_and_counts(curated):
    out, report = curated["out"], curated["report"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["counts"] == report["counts"]
    assert on_disk["thresholds"]["near_dup_similarity"] == 0.95
    assert on_disk["timing"]["pairs_per_second"] > 0
    sheets = sorted(p.name for p in (out / "sheets").glob("*.jpg"))
    assert sheets == sorted(report["sheets"][i].split("/")[-1] for i in range(len(report["sheets"])))
    for reason in ("grayscale", "backlit", "color_mismatch", "duplicate_photo", "unreadable", "near_duplicate"):
        assert f"{reason}_01.jpg" in sheets
    with Image.open(out / "sheets" / "near_duplicate_01.jpg") as sheet:
        assert sheet.width >= 2 * THUMB[0] and sheet.height > THUMB[1]
    counted = {}
    for entry in report["rejected"].values():
        for r in entry["reasons"]:
            counted[r] = counted.get(r, 0) + 1
    assert {k: v for k, v in report["counts"]["per_reason"].items() if v} == counted


def test_deterministic_refuses_non_empty_out_and_never_touches_the_data(curated):
    data, out, base = curated["data"], curated["out"], curated["base"]
    with pytest.raises(FileExistsError):
        curate(data, out, CurationOptions(progress=False))
    with pytest.raises(ValueError):
        curate(data, data / "curation", CurationOptions(progress=False))
    second = base / "out2"
    curate(data, second, CurationOptions(progress=False))
    again = curate(data, out, CurationOptions(progress=False, overwrite=True))  # overwrite replaces
    assert again["counts"] == curated["report"]["counts"]
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        a, b = (out / rel).read_bytes(), (second / rel).read_bytes()
        if rel.name == "report.json":
            a, b = (json.loads(x) for x in (a, b))
            a.pop("timing"), b.pop("timing")
        assert a == b, rel
    assert tree_hash(data) == curated["before"]


def test_script_runs_and_refuses_without_overwrite(curated):
    out = curated["base"] / "out_cli"
    done = run_script("clean_dataset", "--data", curated["data"], "--out", out, "--near-dup-keep", "1", "--no-progress")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["thresholds"]["near_dup_keep"] == 1
    assert len(report["near_duplicates"]["groups"][0]["kept"]) == 1
    done = run_script("clean_dataset", "--data", curated["data"], "--out", out, "--no-progress")
    assert done.returncode == 2 and "--overwrite" in done.stderr
    assert tree_hash(curated["data"]) == curated["before"]


def test_near_duplicate_search_finds_every_similar_pair_without_comparing_all():
    """The candidate bound is lossless: the groups equal those of a brute-force comparison."""
    rng = np.random.default_rng(0)
    base = [generate_label(scene_rng(3, i), 64, 48)[0] for i in range(30)]
    labels = []
    for i, lab in enumerate(base):
        for _ in range(1 + i % 3):  # 1..3 noisy copies of each
            noisy = lab.copy()
            k = int(rng.integers(0, 200))
            noisy[rng.integers(0, 48, k), rng.integers(0, 64, k)] = rng.integers(0, 29, k)
            labels.append(noisy)
    labels = np.stack(labels).astype(np.uint8)
    groups, stats = find_near_duplicate_groups(labels, 0.95, 29)
    n = len(labels)
    brute = {(i, j) for i in range(n) for j in range(i + 1, n)
             if label_agreement(labels[i], labels[j]) >= 0.95}
    assert stats["similar_pairs"] == len(brute)
    assert stats["candidate_pairs"] < n * (n - 1) // 2
    grouped = set()
    for group in groups:
        centre = group[0]
        assert all(label_agreement(labels[centre], labels[m]) >= 0.95 for m in group[1:])
        assert not grouped & set(group)  # disjoint
        grouped |= set(group)
    assert groups and {i for pair in brute for i in pair} >= grouped  # only similar maps are grouped


def test_every_kind_of_dataset_problem_is_a_rejection_reason():
    assert set(PROBLEM_KINDS) <= {reason.name for reason in REASONS}
    assert all(REASON[name].excludes_selection1 for name in PROBLEM_KINDS)


def test_groups_do_not_chain():
    """A~B, B~C, C~D but A !~ C: star groups, not one connected component."""
    assert groups_around_centres(4, [(0, 1), (1, 2), (2, 3)]) == [[1, 0, 2]]
    assert groups_around_centres(5, [(0, 1), (0, 2), (0, 3), (3, 4)]) == [[0, 1, 2, 3]]


def test_small_checks():
    gray = np.full((8, 8, 3), 120, np.uint8)
    assert colorfulness(gray) == 0 < CurationOptions().gray_threshold
    label = np.zeros((8, 8), np.uint8)
    label[:4] = SKY
    photo = np.zeros((8, 8, 3), np.uint8)
    photo[:4], photo[4:] = 220, 20
    assert backlight_score(photo, label) == pytest.approx(20 / 220)
    assert backlight_score(photo, np.zeros_like(label)) is None  # no sky
    assert contrast(gray) == 0 and clipped_fraction(gray) == 0
    # Chromaticity does not change with exposure.
    a, _ = color_channels(np.array([[[100, 150, 50]]], np.uint8))
    b, _ = color_channels(np.array([[[50, 75, 25]]], np.uint8))
    assert abs(int(a[0, 0, 0]) - int(b[0, 0, 0])) <= 1 and abs(int(a[0, 0, 1]) - int(b[0, 0, 1])) <= 1


def test_segmenter_flags_a_swapped_label(tmp_path):
    """With --segmenter: a tiny segmenter trained briefly on clean scenes flags two photos whose
    labels were swapped (both labels are plausible landscapes, so colour statistics alone may not)."""
    data = tmp_path / "data"
    write_synthetic_dataset(data, 100, SIZE, seed=0)
    ckpt = tmp_path / "seg.pkl"
    train_segmenter(data, "landscape", size=(96, 72), epochs=10, batch_size=8, lr=1e-2, width=16, out=ckpt,
          progress=False, log=lambda *_: None)
    # Two scenes whose labels differ on most pixels.
    scenes = [generate_label(scene_rng(9, i), *SIZE) for i in range(12)]
    i, j = min(((i, j) for i in range(12) for j in range(i + 1, 12)),
               key=lambda p: (label_agreement(scenes[p[0]][0], scenes[p[1]][0]), p))
    photos = [render_photo(scenes[k][0], scene_rng(10, k), scenes[k][1]) for k in (i, j)]
    save_pair(data, "swap_a", scenes[j][0], photos[0])
    save_pair(data, "swap_b", scenes[i][0], photos[1])
    report = curate(data, tmp_path / "out", CurationOptions(segmenter=str(ckpt), progress=False))
    for stem in ("swap_a", "swap_b"):
        assert "segmenter_disagreement" in reasons_of(report, stem), report["rejected"].get(stem)
    flagged = [s for s, e in report["rejected"].items()
               if s.startswith("synth_") and "segmenter_disagreement" in e["reasons"]]
    assert len(flagged) <= 3, flagged  # a briefly trained segmenter: almost no clean scene flagged
