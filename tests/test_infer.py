"""A submission folder from label maps (`inference.render_folder`, scripts/infer.py), refusing bad
input before writing."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_script
from jspade.data.readers import DataError
from jspade.data.transforms import to_uint8_images
from jspade.inference import noise_for, render_folder
from jspade.parity import ParityRun
from jspade.runtime import jt
from tiny_models import tiny_checkpoint


@pytest.fixture(scope="module")
def vae_checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pkl")


def write_refs(folder, stems, colors):
    folder.mkdir(parents=True, exist_ok=True)
    for stem, color in zip(stems, colors):
        Image.fromarray(np.full((60, 80, 3), color, np.uint8)).save(folder / f"{stem}.jpg")


def test_renders_one_jpg_per_label_at_contest_size(tmp_path, vae_checkpoint, landscape_sample):
    out = tmp_path / "sub"
    assert render_folder(landscape_sample / "val" / "labels", vae_checkpoint, out)[0] == 2
    names = sorted(p.name for p in out.iterdir())
    assert names == ["487121_2d0257e293_b.jpg", "487122_12f4df64fa_b.jpg"]
    for n in names:
        assert Image.open(out / n).size == (512, 384)


def test_bad_label_refuses_whole_run_and_writes_nothing(tmp_path, vae_checkpoint):
    labels = tmp_path / "labels"
    labels.mkdir()
    Image.fromarray(np.ones((48, 64), np.uint8)).save(labels / "good.png")
    bad = np.ones((48, 64), np.uint16)
    bad[3, 3] = 41
    Image.fromarray(bad).save(labels / "bad.png")
    out = tmp_path / "sub"
    done = run_script("infer", "--labels", labels, "--checkpoint", vae_checkpoint, "--out", out, "--no-progress")
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert "refusing to render" in err and "bad.png" in err and "41" in err and "good.png" not in err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_refuses_non_empty_output_without_overwrite(tmp_path, vae_checkpoint, landscape_sample):
    out = tmp_path / "sub"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        render_folder(landscape_sample / "val" / "labels", vae_checkpoint, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def _render(tmp_path, name, ckpt, labels, **options):
    out = tmp_path / name
    render_folder(labels, ckpt, out, size=(64, 32), **options)
    return {p.name: np.asarray(Image.open(p), np.float32) for p in sorted(out.iterdir())}


def test_seed_decides_the_output(tmp_path, vae_checkpoint, landscape_sample):
    labels = landscape_sample / "val" / "labels"
    a = _render(tmp_path, "a", vae_checkpoint, labels, seed=3)
    b = _render(tmp_path, "b", vae_checkpoint, labels, seed=3, batch_size=1)
    c = _render(tmp_path, "c", vae_checkpoint, labels, seed=4)
    for k in a:
        assert np.abs(a[k] - b[k]).max() <= 2  # same seed, other batch size: same image (JPEG rounding)
        assert np.abs(a[k] - c[k]).mean() > 1  # another seed: another image


def test_style_guided_rendering_uses_the_reference(tmp_path, vae_checkpoint, landscape_sample):
    labels = landscape_sample / "val" / "labels"
    stems = sorted(p.stem for p in labels.iterdir())
    write_refs(tmp_path / "red", stems, [(220, 30, 30)] * 2)
    write_refs(tmp_path / "blue", stems, [(30, 30, 220)] * 2)
    red1 = _render(tmp_path, "r1", vae_checkpoint, labels, style_dir=tmp_path / "red")
    red2 = _render(tmp_path, "r2", vae_checkpoint, labels, style_dir=tmp_path / "red")
    blue = _render(tmp_path, "b", vae_checkpoint, labels, style_dir=tmp_path / "blue")
    for k in red1:
        assert np.abs(red1[k] - red2[k]).max() <= 2
        assert np.abs(red1[k] - blue[k]).mean() > 0.5
    # the 2023 track's JSON map (keys with extension, values relative to --style-root)
    mapping = {f"{s}.png": f"{s}.jpg" for s in stems}
    (tmp_path / "label_to_img.json").write_text(json.dumps(mapping))
    via_json = _render(tmp_path, "j", vae_checkpoint, labels, label_to_img=tmp_path / "label_to_img.json",
                       style_root=tmp_path / "red")
    for k in red1:
        assert np.abs(red1[k] - via_json[k]).max() <= 2


def test_missing_reference_is_named(tmp_path, vae_checkpoint, landscape_sample):
    labels = landscape_sample / "val" / "labels"
    stems = sorted(p.stem for p in labels.iterdir())
    write_refs(tmp_path / "refs", stems[:1], [(0, 0, 0)])
    with pytest.raises(DataError, match=stems[1]):
        render_folder(labels, vae_checkpoint, tmp_path / "o", style_dir=tmp_path / "refs")
    assert not (tmp_path / "o").exists()


def test_original_pytorch_checkpoint_folder(tmp_path, nvlabs_checkpoint_dir, reference_fixture):
    """The original's latest_net_G.pth renders the reference archive's labels as the archive's own
    weights (init.*) do through the generator, whose forward the parity check holds to PyTorch's."""
    reference = ParityRun(reference_fixture)
    opt = reference.ref.opt
    labels = reference.ref["input.label"][:, 0]
    (tmp_path / "labels").mkdir()
    for i, label in enumerate(labels):
        Image.fromarray(label.astype(np.uint8)).save(tmp_path / "labels" / f"{i}.png")
    options = {k: getattr(opt, k) for k in ("ngf", "crop_size", "num_D", "n_layers_D", "label_nc")}
    height, width = labels.shape[1:]
    out = tmp_path / "torch"
    assert render_folder(tmp_path / "labels", nvlabs_checkpoint_dir, out, size=(width, height),
                         model_overrides=options)[0] == len(labels)

    generator = reference.fresh_model().netG
    generator.eval()
    z = jt.array(np.stack([noise_for(0, i, 0, opt.z_dim) for i in range(len(labels))]))
    with jt.no_grad():
        expected = to_uint8_images(generator(jt.array(reference.ref["input.semantics"]), z=z))
    for i in range(len(labels)):
        # The random-weight output is noise-like, where JPEG's loss is large: encode the expected
        # image the same way (same quality) and compare what a reader of the two files sees.
        encoded = io.BytesIO()
        Image.fromarray(expected[i]).save(encoded, format="JPEG", quality=95)
        error = np.abs(np.asarray(Image.open(out / f"{i}.jpg"), np.int16) - np.asarray(Image.open(encoded), np.int16))
        assert error.max() <= 1, (i, error.max(), error.mean())
