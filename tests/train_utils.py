"""A tiny training configuration for tests (CPU, seconds per run)."""
from jspade.config import Config, DataConfig, ModelConfig, Phase, TrainConfig


def tiny_config(output_dir, data_root, **train):
    model = ModelConfig(label_nc=29, crop_size=64, aspect_ratio=2.0, ngf=8, ndf=8, num_D=2, n_layers_D=3,
                        use_vae=False)
    data = DataConfig(dataset="synthetic", root=str(data_root), synthetic_n=16, preprocess_mode="fixed")
    options = dict(output_dir=str(output_dir), name="run", save_every=0, sample_every=0, log_every=1, num_samples=2)
    t = TrainConfig(**{**options, **train})
    return Config(model, data, t, [Phase(epochs=2, batch_size=2, lr=4e-4)])
