"""Training behaviour a user relies on: it learns, it resumes exactly, it refuses to clobber runs,
and it writes what it promises (checkpoints, samples, log)."""
import json

import numpy as np
import pytest

from jspade.checkpoint import read_checkpoint, state_arrays
from jspade.runtime import jt
from jspade.train.schedule import phase_lr
from jspade.train.trainer import RunFolderError, Trainer
from jspade.config import Phase

from tiny_models import straight_and_resumed_runs, tiny_config


def g_weights(trainer):
    return state_arrays(trainer.model.netG)  # as checkpoints name them


def test_overfit_fixed_batch_lowers_reconstruction_error(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, tmp_path / "data"), progress=False)
    ds = trainer.data.phase_loader(0)
    batch = next(iter(ds))
    sem, real = trainer.data.inputs(batch)
    trainer._set_lr(1e-3)

    def l1():
        trainer.model.eval()
        with jt.no_grad():
            err = float(jt.abs(trainer.model.netG(sem) - real).mean().item())
        trainer.model.train()
        return err

    before = l1()
    for _ in range(40):
        losses = trainer.train_step(sem, real)
    after = l1()
    assert np.isfinite(list(losses.values())).all()
    assert after < 0.75 * before, (before, after)


def test_resume_equals_uninterrupted_training(tmp_path):
    # stops mid-epoch (8 batches per epoch) with a checkpoint
    straight, resumed = straight_and_resumed_runs(tiny_config, tmp_path, stop_at=3, total=6)
    a, b = g_weights(straight), g_weights(resumed)
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst < 1e-5, worst
    for opt_a, opt_b in ((straight.optimizer_G, resumed.optimizer_G), (straight.optimizer_D, resumed.optimizer_D)):
        assert opt_a.step_count == opt_b.step_count == 6


def test_run_folder_is_never_clobbered(tmp_path):
    data = tmp_path / "data"
    Trainer(tiny_config(tmp_path, data, max_iters=1), progress=False).train()
    with pytest.raises(RunFolderError, match="--resume"):
        Trainer(tiny_config(tmp_path, data, max_iters=1), progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cfg = tiny_config(tmp_path, data, max_iters=1)
    cfg.train.name = "foreign"
    with pytest.raises(RunFolderError, match="not created by jspade"):
        Trainer(cfg, resume=True, progress=False)


def test_run_writes_checkpoints_samples_and_log(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "data", max_iters=4, save_every=2, sample_every=2)
    run_dir = Trainer(cfg, progress=False).train()
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["iter_0000002.pkl", "iter_0000004.pkl", "latest.pkl"]
    payload = read_checkpoint(run_dir / "checkpoints" / "latest.pkl")
    assert payload["position"]["iteration"] == 4 and set(payload["networks"]) == {"G", "D"}
    assert payload["vgg_pretrained"] is False  # the run says it trained with random VGG features
    samples = sorted((run_dir / "samples").glob("*.jpg"))
    assert [p.name for p in samples] == ["iter_0000002.jpg", "iter_0000004.jpg"]
    from PIL import Image
    grid = Image.open(samples[-1])
    assert grid.size == (3 * 64, 2 * 32)  # label | fake | real, two rows
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in lines] == [1, 2, 3, 4]
    assert {"GAN", "GAN_Feat", "VGG", "D_Fake", "D_real"} <= set(lines[-1]["losses"])
    assert (run_dir / "config.toml").read_text().count("[[phases]]") == 1


def test_phase_lr_decays_linearly_to_near_zero():
    p = Phase(epochs=10, batch_size=1, lr=1.0, decay_epochs=4)
    lrs = [phase_lr(p, e) for e in range(10)]
    assert lrs[:6] == [1.0] * 6
    assert np.allclose(lrs[6:], [0.8, 0.6, 0.4, 0.2])


def test_data_with_a_bad_label_is_refused_before_training(tmp_path):
    from PIL import Image
    from jspade.data.synthetic import write_synthetic_dataset
    root = tmp_path / "land"
    write_synthetic_dataset(root, 4, size=(64, 32))
    bad = next((root / "labels").glob("*.png"))
    arr = np.array(Image.open(bad))
    arr[0, 0] = 41
    Image.fromarray(arr).save(bad)
    cfg = tiny_config(tmp_path / "out", root, max_iters=1)
    cfg.data.dataset = "landscape"
    with pytest.raises(ValueError, match=rf"{bad.name}.*41|41.*{bad.name}"):
        Trainer(cfg, progress=False).train()


def test_validate_false_trains_on_the_complete_pairs(tmp_path, capsys):
    """train.py's own advice for a broken dataset, `--data.validate false`, must work."""
    from jspade.data.readers import DataError
    from jspade.data.synthetic import write_synthetic_dataset

    data = tmp_path / "pairs"
    write_synthetic_dataset(data, 5, size=(64, 32), seed=0)
    sorted((data / "imgs").iterdir())[0].unlink()  # a label without its photo
    cfg = tiny_config(tmp_path, data)
    cfg.data.dataset = "landscape"
    with pytest.raises(DataError, match="--data.validate false"):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "run").exists()
    cfg.data.validate = False
    trainer = Trainer(cfg, progress=False)
    assert trainer.data.phase_sizes() == [4]
    assert "1 incomplete pair(s)" in capsys.readouterr().err
    trainer.run.close()
