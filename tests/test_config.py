"""One validation for configuration, whatever its source: a TOML preset, a --section.key flag, a
checkpoint's stored config. Bad values name the source, the key and what is allowed."""
import argparse
import os

import pytest

from jspade.config import (Config, ConfigError, ModelConfig, Phase, check_config, flag_parser, load_config,
                           parse_model_option, parse_phase, to_toml)
from jspade.train import run_folder

CONFIGS = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


@pytest.mark.parametrize("preset", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_preset_passes_and_round_trips(preset, tmp_path):
    cfg = load_config(preset)
    (tmp_path / "again.toml").write_text(to_toml(cfg))
    assert load_config(tmp_path / "again.toml").to_dict() == cfg.to_dict()


BAD_TOML = [
    ("[train]\nbatch_size = -3\n", ["unknown option [train] batch_size"]),
    ("[[phases]]\nepochs = 1\nbatch_size = -3\n", ["[[phases]] #1", "batch_size", "at least 1", "-3"]),
    ("[[phases]]\nepochs = 0\n", ["epochs", "at least 1"]),
    ("[[phases]]\nepochs = 1\nbogus = 2\n", ["[[phases]] #1", "unknown option bogus"]),
    ("[model]\nuse_vae = \"no\"\n", ["[model] use_vae", "true or false", "'no'"]),
    ("[model]\nngf = \"sixteen\"\n", ["[model] ngf", "integer", "sixteen"]),
    ("[model]\nngf = true\n", ["[model] ngf", "integer"]),
    ("[model]\nnetG = 5\n", ["[model] netG", "spade, tsit"]),
    ("phases = [1, 2]\n", ["phases", "list of tables"]),
    ("[[phases]]\nlr = \"fast\"\n", ["lr", "number"]),
    ("[[phases]]\nepochs = 2\ndecay_epochs = 3\n", ["decay_epochs 3", "2 epochs"]),
    ("[model]\naspect_ratio = 0\n", ["aspect_ratio", "above 0"]),
    ("[modle]\nngf = 3\n", ["unknown section", "modle"]),
    ("[train]\nmax_minutes = nan\n", ["max_minutes", "finite"]),
    ("[model]\nnorm_G = \"spectralfadebatch3x3\"\n", ["norm_G", "FADE", "tsit"]),
    ("[model]\ncrop_size = 4096\naspect_ratio = 0.5\n", ["8192 pixels high", "4096"]),
]


@pytest.mark.parametrize("text, words", BAD_TOML, ids=[t.splitlines()[-1] for t, _ in BAD_TOML])
def test_bad_toml_value_names_the_file_key_and_limit(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("flag, text, words", [
    ("train.max_iters", "-5", "at least 0"), ("train.max_minutes", "nan", "finite"),
    ("train.save_every", "-1", "at least 0"), ("model.ngf", "0", "at least 1"), ("model.ngf", "100000", "at most 256"),
    ("model.label_nc", "0", "at least 1"), ("model.aspect_ratio", "0", "above 0"), ("model.use_vae", "maybe", "true or false"),
    ("model.netG", "unet", "spade, tsit"), ("data.holdout_fraction", "1", "below 1"), ("train.ema_decay", "1.5", "below 1"),
])
def test_flags_are_checked_by_the_same_rules(flag, text, words):
    section, name = flag.split(".")
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        flag_parser(section, name)(text)
    assert flag_parser("model", "ngf")("32") == 32 and flag_parser("train", "max_minutes")("1") == 1.0


def test_values_set_in_code_and_model_options_are_checked_too():
    cfg = Config.default()
    cfg.train.max_minutes = float("inf")
    with pytest.raises(ConfigError, match="max_minutes"):
        check_config(cfg)
    cfg = Config.default()
    cfg.phases = [Phase(batch_size=0)]
    with pytest.raises(ConfigError, match="batch_size"):
        check_config(cfg)
    with pytest.raises(ConfigError, match="at most 256"):
        parse_model_option("ngf", "100000")
    with pytest.raises(ConfigError, match="at least 1"):
        parse_phase("10:0:0.1")
    with pytest.raises(ConfigError, match="ngf"):
        ModelConfig.from_dict({"ngf": 100000})
    assert ModelConfig.from_dict({"ngf": 32, "aspect_ratio": 1, "batchSize": 4}).aspect_ratio == 1.0  # fixture keys ignored


def test_a_stored_config_is_checked_like_a_preset():
    stored = Config.default().to_dict()
    stored["model"]["ngf"] = 100000
    with pytest.raises(ConfigError, match=r"ckpt.pkl \[config\]: \[model\] ngf .*at most 256"):
        Config.from_dict(stored, source="ckpt.pkl [config]")
    stored = Config.default().to_dict()
    stored["phases"][0]["extra"] = 1
    with pytest.raises(ConfigError, match="unknown option extra"):
        Config.from_dict(stored)


def test_run_folder_lock_names_the_holder_and_is_released(tmp_path):
    held = run_folder.lock_run_folder(tmp_path)
    with pytest.raises(run_folder.RunFolderError, match=f"PID {os.getpid()}"):
        run_folder.lock_run_folder(tmp_path)
    held.close()  # as the end of the process (a crash included) releases it
    run_folder.lock_run_folder(tmp_path).close()


def test_a_second_damage_keeps_the_first_evidence(tmp_path):
    latest = tmp_path / "latest.pkl"
    for content in (b"first", b"second", b"third"):
        latest.write_bytes(content)
        run_folder.set_aside_damaged(latest)
    assert [(tmp_path / n).read_bytes() for n in ("latest.pkl.damaged", "latest.pkl.damaged.2",
                                                  "latest.pkl.damaged.3")] == [b"first", b"second", b"third"]


@pytest.mark.parametrize("position", [None, "x", {"iteration": "8", "phase": 0, "epoch": 0, "batch": 0},
                                      {"iteration": 8}, {"iteration": -1, "phase": 0, "epoch": 0, "batch": 0}])
def test_a_malformed_position_is_a_damaged_checkpoint(tmp_path, position):
    from jspade.checkpoint import write_checkpoint
    ckpt = tmp_path / "checkpoints"
    write_checkpoint(ckpt / "iter_0000008.pkl", {"format": "jspade-checkpoint-1", "networks": {},
                                                 "position": position, "config": Config.default().to_dict()})
    with pytest.raises(run_folder.CheckpointError, match="nothing to resume") as caught:
        run_folder.find_resume_point(ckpt)
    assert "iter_0000008.pkl" in str(caught.value)
