"""scripts/infer.py: a submission folder from label maps, refusing bad input before writing."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import infer  # noqa: E402
from tiny_models import tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def vae_checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pkl")


def write_refs(folder, stems, colors):
    folder.mkdir(parents=True, exist_ok=True)
    for stem, color in zip(stems, colors):
        Image.fromarray(np.full((60, 80, 3), color, np.uint8)).save(folder / f"{stem}.jpg")


def test_renders_one_jpg_per_label_at_contest_size(tmp_path, vae_checkpoint, landscape_sample):
    out = tmp_path / "sub"
    rc = infer.main(["--labels", str(landscape_sample / "val" / "labels"), "--checkpoint", str(vae_checkpoint),
                     "--out", str(out), "--no-progress"])
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["487121_2d0257e293_b.jpg", "487122_12f4df64fa_b.jpg"]
    for n in names:
        assert Image.open(out / n).size == (512, 384)


def test_bad_label_refuses_whole_run_and_writes_nothing(tmp_path, vae_checkpoint, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    Image.fromarray(np.ones((48, 64), np.uint8)).save(labels / "good.png")
    bad = np.ones((48, 64), np.uint16)
    bad[3, 3] = 41
    Image.fromarray(bad).save(labels / "bad.png")
    out = tmp_path / "sub"
    rc = infer.main(["--labels", str(labels), "--checkpoint", str(vae_checkpoint), "--out", str(out),
                     "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "bad.png" in err and "41" in err and "good.png" not in err
    assert not out.exists() or not any(out.iterdir())


def test_refuses_non_empty_output_without_overwrite(tmp_path, vae_checkpoint, landscape_sample):
    out = tmp_path / "sub"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        infer.main(["--labels", str(landscape_sample / "val" / "labels"), "--checkpoint", str(vae_checkpoint),
                    "--out", str(out), "--no-progress"])
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def _render(tmp_path, name, ckpt, labels, *extra):
    out = tmp_path / name
    assert infer.main(["--labels", str(labels), "--checkpoint", str(ckpt), "--out", str(out),
                       "--no-progress", "--size", "64x32", *extra]) == 0
    return {p.name: np.asarray(Image.open(p), np.float32) for p in sorted(out.iterdir())}


def test_seed_decides_the_output(tmp_path, vae_checkpoint, landscape_sample):
    labels = landscape_sample / "val" / "labels"
    a = _render(tmp_path, "a", vae_checkpoint, labels, "--seed", "3")
    b = _render(tmp_path, "b", vae_checkpoint, labels, "--seed", "3", "--batch-size", "1")
    c = _render(tmp_path, "c", vae_checkpoint, labels, "--seed", "4")
    for k in a:
        assert np.abs(a[k] - b[k]).max() <= 2  # same seed, other batch size: same image (JPEG rounding)
        assert np.abs(a[k] - c[k]).mean() > 1  # another seed: another image


def test_style_guided_rendering_uses_the_reference(tmp_path, vae_checkpoint, landscape_sample):
    labels = landscape_sample / "val" / "labels"
    stems = sorted(p.stem for p in labels.iterdir())
    write_refs(tmp_path / "red", stems, [(220, 30, 30)] * 2)
    write_refs(tmp_path / "blue", stems, [(30, 30, 220)] * 2)
    red1 = _render(tmp_path, "r1", vae_checkpoint, labels, "--style-dir", str(tmp_path / "red"))
    red2 = _render(tmp_path, "r2", vae_checkpoint, labels, "--style-dir", str(tmp_path / "red"))
    blue = _render(tmp_path, "b", vae_checkpoint, labels, "--style-dir", str(tmp_path / "blue"))
    for k in red1:
        assert np.abs(red1[k] - red2[k]).max() <= 2
        assert np.abs(red1[k] - blue[k]).mean() > 0.5
    # the 2023 track's JSON map (keys with extension, values relative to --style-root)
    mapping = {f"{s}.png": f"{s}.jpg" for s in stems}
    (tmp_path / "label_to_img.json").write_text(json.dumps(mapping))
    via_json = _render(tmp_path, "j", vae_checkpoint, labels, "--label-to-img", str(tmp_path / "label_to_img.json"),
                       "--style-root", str(tmp_path / "red"))
    for k in red1:
        assert np.abs(red1[k] - via_json[k]).max() <= 2


def test_missing_reference_is_named(tmp_path, vae_checkpoint, landscape_sample, capsys):
    labels = landscape_sample / "val" / "labels"
    stems = sorted(p.stem for p in labels.iterdir())
    write_refs(tmp_path / "refs", stems[:1], [(0, 0, 0)])
    rc = infer.main(["--labels", str(labels), "--checkpoint", str(vae_checkpoint), "--out", str(tmp_path / "o"),
                     "--style-dir", str(tmp_path / "refs"), "--no-progress"])
    assert rc == 1 and stems[1] in capsys.readouterr().err


def test_original_pytorch_checkpoint_folder(tmp_path, nvlabs_checkpoint_dir, landscape_sample, reference_fixture):
    cfg = json.loads(str(np.load(reference_fixture)["config_json"]))
    options = [f"--model-option={k}={cfg[k]}" for k in ("ngf", "crop_size", "num_D", "n_layers_D", "label_nc")]
    out = tmp_path / "torch"
    rc = infer.main(["--labels", str(landscape_sample / "val" / "labels"), "--checkpoint", str(nvlabs_checkpoint_dir),
                     "--out", str(out), "--no-progress", *options])
    assert rc == 0 and len(list(out.glob("*.jpg"))) == 2
