"""Histogram matching toward a reference photo raises the 2023 style-similarity term, on the real
landscape samples."""
import itertools

import numpy as np
import pytest
from PIL import Image

from jspade.histogram_match import match_histograms
from jspade.metrics.scores import style_similarity


def photos(folder):
    paths = sorted((folder / "train" / "imgs").glob("*.jpg")) + sorted((folder / "val" / "imgs").glob("*.jpg"))
    # at a generated size, as infer.py writes them
    return [np.asarray(Image.open(p).convert("RGB").resize((512, 384), Image.BICUBIC)) for p in paths]


def test_matching_raises_style_similarity_on_real_photos(landscape_sample):
    images = photos(landscape_sample)
    assert len(images) >= 3
    before, after = [], []
    for a, b in itertools.permutations(range(len(images)), 2):  # each photo as "output" toward another's style
        before.append(style_similarity(images[a], images[b]))
        after.append(style_similarity(match_histograms(images[a], images[b]), images[b]))
    assert all(y > x for x, y in zip(before, after)), list(zip(before, after))
    assert np.mean(before) < 0.5 and min(after) > 0.99  # the histograms become the reference's


def test_matching_keeps_an_image_matched_to_itself_and_preserves_order(landscape_sample):
    image = photos(landscape_sample)[0]
    np.testing.assert_array_equal(match_histograms(image, image), image)
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    out = match_histograms(image, reference)
    # monotone per channel: a brighter input pixel never ends up darker than a dimmer one
    for c in range(3):
        src, dst = image[..., c].ravel(), out[..., c].ravel().astype(int)
        levels = np.unique(src)
        highest = np.array([dst[src == v].max() for v in levels])
        lowest = np.array([dst[src == v].min() for v in levels])
        assert np.all(highest[:-1] <= lowest[1:])


def test_bad_inputs_are_refused():
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="image"):
        match_histograms(img.astype(np.float32), img)
    with pytest.raises(ValueError, match="reference"):
        match_histograms(img, np.zeros((4, 4), np.uint8))


def test_evaluate_shows_the_effect_of_matching_on_style_similarity(landscape_sample, tmp_path, capsys):
    from jspade.metrics.evaluation import EvaluationInputs, evaluate
    images = photos(landscape_sample)
    (tmp_path / "out").mkdir()
    (tmp_path / "ref").mkdir()
    for i in range(len(images)):  # output i is photo i, its reference the next photo
        Image.fromarray(images[i]).save(tmp_path / "out" / f"s{i}.png")
        Image.fromarray(images[(i + 1) % len(images)]).save(tmp_path / "ref" / f"s{i}.png")
    values, _ = evaluate(EvaluationInputs(fake=tmp_path / "out", references=tmp_path / "ref", match_histogram=True,
                                          progress=False))
    before, after = values["style_similarity"], values["style_similarity_matched"]
    assert before < 0.5 and after > 0.99


def test_infer_match_histogram_gives_outputs_their_reference_colours(landscape_sample, tmp_path):
    from jspade.inference import render_folder
    from tiny_models import tiny_checkpoint
    ckpt = tiny_checkpoint(tmp_path / "tiny.pkl")
    (tmp_path / "labels").mkdir()
    (tmp_path / "refs").mkdir()
    for i, image in enumerate(photos(landscape_sample)[:2]):
        label = np.zeros((32, 64), np.uint8)
        label[16:] = 5 + i
        Image.fromarray(label).save(tmp_path / "labels" / f"s{i}.png")
        Image.fromarray(image).save(tmp_path / "refs" / f"s{i}.png")
    options = dict(style_dir=tmp_path / "refs", size=(128, 64), quality=100)
    assert render_folder(tmp_path / "labels", ckpt, tmp_path / "plain", **options)[0] == 2
    assert render_folder(tmp_path / "labels", ckpt, tmp_path / "matched", match_histogram=True, **options)[0] == 2
    for i in range(2):
        ref = np.asarray(Image.open(tmp_path / "refs" / f"s{i}.png"))
        plain = np.asarray(Image.open(tmp_path / "plain" / f"s{i}.jpg"))
        matched = np.asarray(Image.open(tmp_path / "matched" / f"s{i}.jpg"))
        assert style_similarity(matched, ref) > 0.8 > style_similarity(plain, ref)
