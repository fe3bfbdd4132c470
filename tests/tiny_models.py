"""Tiny models for tests (CPU, seconds): a training config and a label-reactive VAE checkpoint."""
import numpy as np

from jspade.checkpoint import save_checkpoint
from jspade.config import Config, DataConfig, ModelConfig, Phase, TrainConfig
from jspade.data.semantics import semantics_for
from jspade.inference import label_tensor
from jspade.models.normalization import SyncBatchNorm
from jspade.models.spade_model import SPADEModel
from jspade.runtime import jt


def tiny_config(output_dir, data_root, **train):
    model = ModelConfig(label_nc=29, crop_size=64, aspect_ratio=2.0, ngf=8, ndf=8, num_D=2, n_layers_D=3,
                        use_vae=False)
    data = DataConfig(dataset="synthetic", root=str(data_root), synthetic_n=16, preprocess_mode="fixed")
    options = dict(output_dir=str(output_dir), name="run", save_every=0, sample_every=0, log_every=1, num_samples=2)
    t = TrainConfig(**{**options, **train})
    return Config(model, data, t, [Phase(epochs=2, batch_size=2, lr=4e-4)])


def straight_and_resumed_runs(make_config, tmp_path, stop_at, total):
    """Train `total` iterations in one go, and again stopping at `stop_at` (inside the first epoch) and
    resuming to `total`: returns both trainers (the resumed one checked to start mid-epoch at `stop_at`)."""
    from jspade.train.trainer import Trainer
    data = tmp_path / "data"
    straight = Trainer(make_config(tmp_path / "straight", data, max_iters=total), progress=False)
    straight.train()
    Trainer(make_config(tmp_path / "split", data, max_iters=stop_at), progress=False).train()
    resumed = Trainer(make_config(tmp_path / "split", data, max_iters=total), resume=True, progress=False)
    assert (resumed.pos.iteration, resumed.pos.batch) == (stop_at, stop_at)
    resumed.train()
    return straight, resumed


def tiny_checkpoint(path):
    """A random 64x32 VAE model that reacts visibly to its label: with the default init (gain 0.02) and
    untouched batch-norm statistics a random generator's output barely depends on the label, so the
    weights use gain 1 and the running statistics are set from one batch of random scenes."""
    cfg = Config.default()
    cfg.model = ModelConfig(label_nc=29, crop_size=64, aspect_ratio=2.0, ngf=8, ndf=8, use_vae=True,
                            init_variance=1.0)
    jt.set_global_seed(1)
    model = SPADEModel(cfg.model, with_discriminator=False, with_vgg=False)
    norms = [m for m in model.netG.modules() if isinstance(m, SyncBatchNorm)]
    rng = np.random.default_rng(0)
    labels = []
    for _ in range(8):
        label = np.full((32, 64), rng.integers(29), np.int32)
        for _ in range(6):
            y, x = rng.integers(32), rng.integers(64)
            label[y:y + rng.integers(4, 16), x:x + rng.integers(4, 30)] = rng.integers(29)
        labels.append(label)
    for m in norms:
        m.momentum = 1.0
    model.netG.train()
    with jt.no_grad():
        model.netG(semantics_for(cfg.model, label_tensor(labels, (64, 32))), z=jt.randn(8, cfg.model.z_dim)).sync()
    for m in norms:
        m.momentum = 0.1
    model.eval()
    save_checkpoint(path, model, {"config": cfg.to_dict()})
    return path


def tiny_clip_checkpoint(root, label_nc=29):
    """A 64x32 CLIP model (clip_dim 512, the tiny random CLIP's size) whose CLIP heads are randomised so
    that the embedding visibly matters, with a style bank of 4 centres over the random:0 CLIP's
    embeddings of 12 synthetic photos, saved as a run folder: `root/run/checkpoints/latest.pkl` with
    `root/run/config.toml` naming the data `root/data`. Returns (checkpoint, data folder, bank)."""
    from jspade.clip.features import encode_images
    from jspade.clip.weights import tiny_random_clip
    from jspade.data.readers import read_image
    from jspade.data.synthetic import write_synthetic_dataset
    from jspade.style_bank import build_style_bank
    stems = [str(s) for s in write_synthetic_dataset(root / "data", 12, size=(64, 32), seed=0)]
    clip_model, digest = tiny_random_clip(0, warn=False)
    photos = [read_image(next((root / "data" / "imgs").glob(f"{s}.*"))) for s in stems]
    bank = build_style_bank(encode_images(clip_model, photos), stems, digest, k=4)
    cfg = Config.default()
    cfg.model = ModelConfig(label_nc=label_nc, crop_size=64, aspect_ratio=2.0, ngf=4, ndf=4, num_D=1,
                            n_layers_D=2, use_vae=False, clip_dim=512, no_vgg_loss=True)
    cfg.data.root = str(root / "data")
    jt.set_global_seed(5)
    model = SPADEModel(cfg.model, with_discriminator=False, with_vgg=False)
    rng = np.random.default_rng(0)
    for name, p in model.netG.named_parameters():
        if ".clip_affine." in name:
            p.update(jt.array(rng.normal(0, 0.5, p.shape).astype(np.float32)))
    model.set_style_bank(bank)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text(f'[data]\nroot = "{root / "data"}"\n')
    ckpt = save_checkpoint(run / "checkpoints" / "latest.pkl", model,
                           {"config": cfg.to_dict(), "style_bank": bank.to_payload()})
    return ckpt, root / "data", bank
