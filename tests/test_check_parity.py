"""check_parity's bounds and its refusals: the reference's own noise (`noise.expected.*`) widens an array's
bound (a gradient's by the larger of it and our own noise), and a malformed archive is one line naming the
file and the reason, exit status 1, before anything runs."""
import json
import zipfile

import numpy as np
import pytest

from conftest import run_script
from jspade.parity import ArchiveError, Comparison, ReferenceArchive


def test_reference_noise_widens_the_bound_and_says_so():
    bare = Comparison("G.train_forward", error=1.5e-4, tolerance=1e-4)
    assert not bare.passed
    with_ref = Comparison("G.train_forward", error=1.5e-4, tolerance=1e-4, reference_noise=6e-5)
    assert with_ref.passed and not with_ref.ok and with_ref.needed_reference_noise
    too_far = Comparison("G.eval_forward", error=1.7e-4, tolerance=1e-4, reference_noise=6e-5, noise=1e-3)
    assert not too_far.passed and too_far.within_noise  # an activation's own noise never counts (NO*)
    # a gradient: tolerance + the larger of the reference's and our own noise
    grad = Comparison("G_step.grad.G.fc.bias", error=3e-4, tolerance=1e-4, gradient=True,
                      reference_noise=5e-5, noise=2.5e-4)
    assert grad.passed and not grad.needed_reference_noise
    grad_ref = Comparison("G_step.grad.G.fc.bias", error=3e-4, tolerance=1e-4, gradient=True,
                          reference_noise=2.5e-4, noise=1e-5)
    assert grad_ref.passed and grad_ref.needed_reference_noise
    assert not Comparison("x", error=float("nan"), tolerance=1e-4, reference_noise=1.0).passed


def valid_config():
    return {"netG": "spade", "label_nc": 3, "semantic_nc": 3, "use_vae": False, "num_D": 1}


def write_npz(path, arrays):
    np.savez(path, **arrays)
    return path


def everything(config):
    arrays = {"config_json": np.array(json.dumps(config))}
    from jspade.parity import required_arrays
    for name in required_arrays(config):
        arrays[name] = np.zeros(1, np.float32)
    arrays["init.G.fc.weight"] = arrays["init.D.x"] = np.zeros(1, np.float32)
    return arrays


@pytest.mark.parametrize("make,reason", [
    (lambda p: p.write_text("not an archive"), "not an .npz"),
    (lambda p: write_npz(p, {"input.label": np.zeros(1)}), "no config_json"),
    (lambda p: write_npz(p, {"config_json": np.array("{not json")}), "config_json"),
    (lambda p: write_npz(p, {k: v for k, v in everything(valid_config()).items() if k != "input.semantics"}),
     "missing arrays input.semantics"),
    (lambda p: write_npz(p, {k: v for k, v in everything(valid_config()).items() if not k.startswith("init.D")}),
     "missing arrays init.D.*"),
])
def test_a_malformed_archive_is_named_with_its_reason(tmp_path, make, reason):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(ArchiveError, match=reason) as err:
        ReferenceArchive(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_an_archive_with_everything_opens(tmp_path):
    path = write_npz(tmp_path / "ok.npz", everything(valid_config()))
    assert ReferenceArchive(path).opt.label_nc == 3


def test_a_truncated_member_is_named(tmp_path):
    path = write_npz(tmp_path / "cut.npz", {**everything(valid_config()), "expected.big": np.arange(4096.0)})
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("expected.big.npy")
    # overwrite the member's data with garbage: the zip directory still lists it, its CRC fails
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    path.write_bytes(data[:start + 200] + b"\xff" * 200 + data[start + 400:])
    archive = ReferenceArchive(path)
    with pytest.raises(ArchiveError, match="expected.big"):
        archive["expected.big"]


def test_check_parity_on_a_malformed_archive_is_one_line_and_exit_1(tmp_path):
    good = write_npz(tmp_path / "good.npz", everything(valid_config()))
    bad = tmp_path / "notes.npz"
    bad.write_text("a text file, not an archive")
    result = run_script("check_parity", good, bad, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "not an .npz" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""  # every archive checked before any run
