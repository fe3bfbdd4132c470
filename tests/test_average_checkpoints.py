"""Checkpoint averaging (scripts/average_checkpoints.py): the mean of several generators, usable for inference."""
import numpy as np
import pytest

from jspade.checkpoint import average_checkpoints, load_checkpoint, read_checkpoint, save_checkpoint, state_arrays
from jspade.config import Config, ModelConfig
from jspade.models.spade_model import SPADEModel
from jspade.runtime import jt


def two_checkpoints(folder, with_ema=False):
    """(config, paths) of two checkpoints of one tiny model with different random weights (and EMA copies)."""
    cfg = Config.default()
    cfg.model = ModelConfig(label_nc=29, crop_size=64, aspect_ratio=2.0, ngf=4, use_vae=False)
    paths = []
    for seed in (1, 2):
        jt.set_global_seed(seed)
        extra = {"config": cfg.to_dict()}
        model = SPADEModel(cfg.model, with_vgg=False)
        if with_ema:
            extra["ema_networks"] = {"G": state_arrays(SPADEModel(cfg.model, with_discriminator=False,
                                                                  with_vgg=False).netG)}
        paths.append(save_checkpoint(folder / f"{seed}.pkl", model, extra))
    return cfg, paths


def test_average_of_two_checkpoints(tmp_path):
    cfg, paths = two_checkpoints(tmp_path)
    out = tmp_path / "avg.pkl"
    assert average_checkpoints(paths, out) == ["G"]
    a, b = (read_checkpoint(p)["networks"]["G"] for p in paths)
    avg = read_checkpoint(out)["networks"]["G"]
    for k in ("fc.weight", "head_0.conv_0.weight_orig", "up_0.norm_0.param_free_norm.running_var"):
        assert np.allclose(avg[k], (a[k] + b[k]) / 2, atol=1e-7)
    # u, v belong to the averaged weight: sigma = u^T W v is its largest singular value
    w = avg["up_1.conv_0.weight_orig"].reshape(avg["up_1.conv_0.weight_orig"].shape[0], -1)
    sigma = avg["up_1.conv_0.weight_u"] @ w @ avg["up_1.conv_0.weight_v"]
    assert sigma == pytest.approx(np.linalg.svd(w, compute_uv=False)[0], rel=1e-3)
    model = SPADEModel(cfg.model, with_discriminator=False, with_vgg=False)
    load_checkpoint(out, model, networks=("G",))  # loads strictly
    with pytest.raises(FileExistsError):  # never overwrites silently
        average_checkpoints(paths, out)


def test_ema_weights_are_averaged_too_unless_no_ema(tmp_path):
    _, paths = two_checkpoints(tmp_path, with_ema=True)
    assert average_checkpoints(paths, tmp_path / "avg.pkl") == ["G"]
    a, b = (read_checkpoint(p)["ema_networks"]["G"] for p in paths)
    avg = read_checkpoint(tmp_path / "avg.pkl")
    assert np.allclose(avg["ema_networks"]["G"]["fc.weight"], (a["fc.weight"] + b["fc.weight"]) / 2, atol=1e-7)
    assert not np.allclose(avg["networks"]["G"]["fc.weight"], avg["ema_networks"]["G"]["fc.weight"])
    assert average_checkpoints(paths, tmp_path / "raw.pkl", use_ema=False) == ["G"]
    assert "ema_networks" not in read_checkpoint(tmp_path / "raw.pkl")
