"""Configuration: dataclasses whose field names follow the original SPADE options, loaded from
TOML presets in `configs/` and overridden from the command line."""
from dataclasses import dataclass, fields


@dataclass
class ModelConfig:
    """The networks' and losses' options (names as in the original `options/*.py`)."""
    label_nc: int = 29
    contain_dontcare_label: bool = False
    no_instance: bool = True
    output_nc: int = 3
    crop_size: int = 256
    aspect_ratio: float = 4 / 3
    num_upsampling_layers: str = "normal"  # normal | more | most
    ngf: int = 64
    ndf: int = 64
    num_D: int = 2
    n_layers_D: int = 4
    norm_G: str = "spectralspadesyncbatch3x3"
    norm_D: str = "spectralinstance"
    norm_E: str = "spectralinstance"
    use_vae: bool = True
    z_dim: int = 256
    gan_mode: str = "hinge"  # hinge | original | ls | w
    no_ganFeat_loss: bool = False
    lambda_feat: float = 10.0
    no_vgg_loss: bool = False
    lambda_vgg: float = 10.0
    lambda_kld: float = 0.05
    init_type: str = "xavier"
    init_variance: float = 0.02

    @property
    def semantic_nc(self) -> int:
        """Generator input channels: one-hot classes (+ dontcare) (+ instance edges)."""
        return self.label_nc + int(self.contain_dontcare_label) + int(not self.no_instance)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a dict, ignoring keys that are not model options (e.g. a fixture's batch size)."""
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        if "lambda_vgg" in d and not d["lambda_vgg"]:
            cfg.no_vgg_loss = True  # the reference fixtures say "lambda_vgg 0 means no VGG term"
        return cfg
