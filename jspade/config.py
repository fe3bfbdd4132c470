"""Configuration: dataclasses whose field names follow the original SPADE options, loaded from
TOML presets in `configs/` and overridden from the command line."""
from dataclasses import dataclass, fields


def image_size(crop_size, aspect_ratio):
    """(width, height) of the images a model of this crop size and aspect ratio makes and trains on."""
    return crop_size, round(crop_size / aspect_ratio)


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
    netG: str = "spade"  # spade | tsit (Jiang et al. 2020; the options below are TSIT's)
    norm_S: str = "spectralinstance"  # TSIT's stream norm: spectralinstance | spectralbatch | spectralsyncbatch
    style_stream: bool = False  # TSIT: keep a style stream over the reference photo (the original's SIS drops it: no_ss)
    alpha: float = 1.0  # TSIT style stream: FAdaIN strength in [0, 1]

    @property
    def use_vgg(self) -> bool:
        return not self.no_vgg_loss and self.lambda_vgg > 0

    @property
    def image_size(self) -> tuple:
        """(width, height) of the generated images."""
        return image_size(self.crop_size, self.aspect_ratio)

    @property
    def num_label_ids(self) -> int:
        """Ids a label map may hold: the classes 0..label_nc-1 (+ the dontcare id label_nc)."""
        return self.label_nc + int(self.contain_dontcare_label)

    @property
    def semantic_nc(self) -> int:
        """Generator input channels: one-hot over the label ids (+ instance edges)."""
        return self.num_label_ids + int(not self.no_instance)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a dict, ignoring keys that are not model options (e.g. a fixture's batch size)."""
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        if "lambda_vgg" in d and not d["lambda_vgg"]:
            cfg.no_vgg_loss = True  # the reference fixtures say "lambda_vgg 0 means no VGG term"
        if d.get("task", "SIS") != "SIS":
            raise ValueError(f"TSIT task {d['task']!r} is not supported: only SIS (semantic image synthesis)")
        if "no_ss" in d and "style_stream" not in d:
            cfg.style_stream = not d["no_ss"]  # the original TSIT's name for the opposite
        return cfg


@dataclass
class DataConfig:
    """Where the training pairs come from and how they are preprocessed (original option names)."""
    dataset: str = "landscape"  # landscape | coco_stuff | ade20k | cityscapes | folder | synthetic
    root: str = ""  # dataset folder (for 'synthetic': where the generated set is cached)
    load_size: int = 0  # 0: the dataset's default
    preprocess_mode: str = ""  # '': the dataset's default (landscape: fixed)
    no_flip: bool = False
    num_workers: int = 0
    validate: bool = True  # scan the whole dataset for broken pairs/ids before training
    synthetic_n: int = 512  # for dataset = 'synthetic'
    synthetic_seed: int = 0
    val_root: str = ""  # held-out pairs for FID during training (train.fid_every); never trained on
    holdout_fraction: float = 0.0  # without val_root: this fixed fraction of the pairs (by stem hash) is held out
    synthetic_val_n: int = 0  # for 'synthetic': held-out scenes generated in <root>/val (other scene indices)


@dataclass
class Phase:
    """One stage of the schedule: `epochs` over the dataset (or the stems of `subset`)."""
    epochs: int = 1
    batch_size: int = 1
    lr: float = 2e-4
    subset: str = ""  # a text file of stems ('' = all data); relative paths are relative to data.root
    decay_epochs: int = 0  # linear decay of lr to 0 over this phase's last N epochs (the original's niter_decay)
    diffaugment: str = ""  # DiffAugment on both D inputs: comma list of translation, cutout, color ('' = off)


@dataclass
class TrainConfig:
    name: str = ""  # run folder name under output_dir ('' = <preset>-<date>-<time>)
    output_dir: str = "results"
    seed: int = 0
    beta1: float = 0.0  # used only with no_ttur (TTUR fixes betas to 0, 0.9)
    beta2: float = 0.9
    no_ttur: bool = False  # TTUR: G lr = lr/2, D lr = 2*lr, betas (0, 0.9)
    max_iters: int = 0  # stop after this many iterations in total (0 = run every phase to the end)
    max_minutes: float = 0.0  # stop (with a checkpoint) after this much wall time (0 = no limit)
    save_every: int = 1000  # iterations between numbered checkpoints (latest is refreshed at each)
    keep_last: int = 0  # keep only the newest K numbered snapshots (0 = all); phase ends and latest are kept
    restart_on_crash: int = 0  # restart a run killed by a signal from its newest intact checkpoint, up to N times
    sample_every: int = 500  # iterations between sample grids
    log_every: int = 10
    num_samples: int = 4  # rows in a sample grid
    vgg_weights: str = ""  # torchvision vgg19-*.pth or Jittor vgg19.pkl; '' = random VGG (loud warning)
    amp: bool = False  # mixed precision on CUDA via Jittor's auto_mixed_precision_level (ignored on CPU)
    reuse_fake: bool = False  # D step on the G step's fake instead of a second G forward (faster; not the original's)
    ema_decay: float = 0.0  # keep an EMA copy of G (and E) with this decay (0 = off; 0.999 for contest runs)
    ema_bn_batches: int = 20  # training batches that recompute the EMA copy's batch-norm statistics before use
    fid_every: int = 0  # iterations between FID evaluations on the held-out set (0 = off); keeps best_fid.pkl


@dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    phases: list

    SECTIONS = ("model", "data", "train")

    @classmethod
    def default(cls):
        return cls(ModelConfig(), DataConfig(), TrainConfig(), [Phase()])

    def to_dict(self):
        out = {s: {f.name: getattr(getattr(self, s), f.name) for f in fields(getattr(self, s))}
               for s in self.SECTIONS}
        out["phases"] = [{f.name: getattr(p, f.name) for f in fields(Phase)} for p in self.phases]
        return out

    @classmethod
    def from_dict(cls, d):
        cfg = cls.default()
        for section in cls.SECTIONS:
            target = getattr(cfg, section)
            known = {f.name for f in fields(target)}
            for k, v in d.get(section, {}).items():
                if k not in known:
                    raise ValueError(f"unknown option [{section}] {k}")
                setattr(target, k, v)
        if "phases" in d:
            cfg.phases = [Phase(**p) for p in d["phases"]]
        return cfg


def load_config(path):
    """A TOML preset (sections [model], [data], [train] and [[phases]]) over the defaults."""
    import tomllib
    with open(path, "rb") as f:
        try:
            return Config.from_dict(tomllib.load(f))
        except (tomllib.TOMLDecodeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None


def to_toml(cfg: Config) -> str:
    """The config as TOML (written into every run folder, so a run says how it was made)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    d = cfg.to_dict()
    lines = []
    for section in Config.SECTIONS:
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in d[section].items()]
        lines.append("")
    for p in d["phases"]:
        lines.append("[[phases]]")
        lines += [f"{k} = {value(v)}" for k, v in p.items()]
        lines.append("")
    return "\n".join(lines)


def add_config_arguments(parser):
    """One `--section.field` flag for every config field (e.g. --model.ngf 32, --train.save_every 200)."""
    defaults = Config.default()
    for section in Config.SECTIONS:
        group = parser.add_argument_group(f"[{section}] options (override the preset)")
        for f in fields(getattr(defaults, section)):
            default = getattr(getattr(defaults, section), f.name)
            kind = type(default)
            group.add_argument(f"--{section}.{f.name}", dest=f"{section}.{f.name}", type=value_parser(kind),
                               default=None, metavar=kind.__name__.upper(), help=f"(default {default!r})")
    parser.add_argument("--phases", default=None, metavar="SPEC",
                        help="replace the preset's phases: 'EPOCHS:BATCH:LR[:SUBSET[:DECAY]],...'")


def size_argument(minimum=1, maximum=None):
    """An argparse type for 'WIDTHxHEIGHT' (e.g. 512x384) -> (width, height), each within minimum..maximum."""
    import argparse

    def parse(text):
        try:
            width, height = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"size must look like 512x384 (WIDTHxHEIGHT), not {text!r}")
        if width < minimum or height < minimum:
            raise argparse.ArgumentTypeError(f"width and height must be at least {minimum}")
        if maximum is not None and (width > maximum or height > maximum):
            raise argparse.ArgumentTypeError(f"{width}x{height} is too large: at most {maximum}x{maximum}")
        return width, height

    return parse


def value_parser(kind):
    """The text -> value converter for an option of type `kind`: the one string reading of every option
    (command line, `--model-option`, the original's opt.txt), with one set of true/false words."""
    return _parse_bool if kind is bool else kind


def _parse_bool(s):
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {s!r}")


def parse_model_option(name, text):
    """`text` as the ModelConfig field `name` holds it; ValueError naming an unknown option or a bad value."""
    kinds = {f.name: type(f.default) for f in fields(ModelConfig)}
    if name not in kinds:
        raise ValueError(f"unknown model option {name!r}")
    try:
        return value_parser(kinds[name])(text)
    except ValueError:
        what = {bool: "true or false", int: "an integer", float: "a number"}.get(kinds[name], kinds[name].__name__)
        raise ValueError(f"model option {name} must be {what}, got {text!r}") from None


def apply_overrides(cfg: Config, args) -> Config:
    for key, v in vars(args).items():
        if v is None or "." not in key:
            continue
        section, name = key.split(".", 1)
        if section in Config.SECTIONS:
            setattr(getattr(cfg, section), name, v)
    if getattr(args, "phases", None):
        cfg.phases = [parse_phase(s) for s in args.phases.split(",")]
    return cfg


def parse_phase(spec: str) -> Phase:
    parts = spec.split(":")
    usage = f"phase {spec!r}: expected EPOCHS:BATCH:LR[:SUBSET[:DECAY]], e.g. 38:2:0.0002"
    if len(parts) < 3:
        raise ValueError(usage)
    try:
        phase = Phase(epochs=int(parts[0]), batch_size=int(parts[1]), lr=float(parts[2]),
                      subset=parts[3] if len(parts) > 3 else "", decay_epochs=int(parts[4]) if len(parts) > 4 else 0)
    except ValueError:
        raise ValueError(f"{usage} (EPOCHS, BATCH and DECAY whole numbers, LR a number)") from None
    if phase.epochs < 1 or phase.batch_size < 1 or not phase.lr > 0 or phase.decay_epochs < 0:
        raise ValueError(f"phase {spec!r}: EPOCHS and BATCH must be at least 1, LR above 0, DECAY at least 0")
    return phase
