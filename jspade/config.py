"""Configuration: dataclasses whose field names follow the original SPADE options, loaded from
TOML presets in `configs/` and overridden from the command line.

Every value, whatever its source (a TOML preset, a `--section.key` flag, `--model-option`, an original
opt.txt, a checkpoint's stored config), is checked against the one table of rules below (`RULES`):
its type, its range or choices, unknown keys, and the rules between fields (`check_config`). A bad
value is a ConfigError naming the source, the key and what is allowed."""
import math
import re
from dataclasses import dataclass, fields

from jspade.errors import ConfigError


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
    clip_dim: int = 0  # > 0: SPADE modulated by CLIP image embeddings of this size (512 for ViT-B/32); docs/clip_spade.md

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
    def from_dict(cls, d: dict, source="model options") -> "ModelConfig":
        """Build from a dict, ignoring keys that are not model options (e.g. a fixture's batch size);
        every known value is checked (ConfigError naming `source`)."""
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: check_value("model", k, v, source) for k, v in d.items() if k in names})
        if "lambda_vgg" in d and not d["lambda_vgg"]:
            cfg.no_vgg_loss = True  # the reference fixtures say "lambda_vgg 0 means no VGG term"
        if d.get("task", "SIS") != "SIS":
            raise ConfigError(f"{source}: TSIT task {d['task']!r} is not supported: only SIS (semantic image synthesis)")
        if "no_ss" in d and "style_stream" not in d:
            cfg.style_stream = not d["no_ss"]  # the original TSIT's name for the opposite
        check_model(cfg, source)
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
    def from_dict(cls, d, source="configuration"):
        """The defaults overridden by `d` ({section: {key: value}, "phases": [{key: value}, ...]}), every
        key and value checked (ConfigError naming `source`), the rules between fields included."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a table of sections, found {type(d).__name__}")
        unknown = sorted(str(k) for k in d if k not in cls.SECTIONS + ("phases",))
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)} "
                              f"(known: {', '.join(cls.SECTIONS)}, phases)")
        cfg = cls.default()
        for section in cls.SECTIONS:
            table = d.get(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: [{section}] must be a table of options, found {type(table).__name__}")
            target = getattr(cfg, section)
            for k, v in table.items():
                setattr(target, k, check_value(section, k, v, source))
        if "phases" in d:
            cfg.phases = phases_from_list(d["phases"], source)
        check_config(cfg, source)
        return cfg



# --- the rules: one table for every source of configuration ---------------------------------------
@dataclass(frozen=True)
class Rule:
    """What a field accepts beyond its type (the type of its default): a range [low, high] (low
    excluded when low_open), a set of choices, or a pattern (a regular expression the text must match
    in full, described by `what`)."""
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = None
    pattern: str = None
    what: str = ""


MAX_IMAGE_SIDE = 4096  # generated image width/height (crop_size and crop_size / aspect_ratio)
MAX_COUNT = 10**9  # iterations, epochs, images: beyond this a value is a typo, not a plan
NORM_G = r"(spectral)?(spade|fade)(instance|batch|syncbatch)[1-9]x[1-9]"
NORM_NONSPADE = r"(spectral)?(none|instance|batch|syncbatch|sync_batch)?"
DIFFAUGMENT = r"\s*((color|translation|cutout)\s*(,\s*(color|translation|cutout)\s*)*)?"

# Sizes are bounded so that a file or flag cannot ask for a network that exhausts memory (ngf 256
# already means ~1e9 generator weights); counts so that a typo does not plan a run of years.
RULES = {
    "model": {
        "label_nc": Rule(1, 1024),
        "output_nc": Rule(1, 4),
        "crop_size": Rule(1, MAX_IMAGE_SIDE),
        "aspect_ratio": Rule(0, 1000, low_open=True),
        "num_upsampling_layers": Rule(choices=("normal", "more", "most")),
        "ngf": Rule(1, 256),
        "ndf": Rule(1, 256),
        "num_D": Rule(1, 8),
        "n_layers_D": Rule(1, 8),
        "norm_G": Rule(pattern=NORM_G, what="e.g. spectralspadesyncbatch3x3 ((spectral)(spade|fade)"
                                            "(instance|batch|syncbatch)KxK)"),
        "norm_D": Rule(pattern=NORM_NONSPADE, what="e.g. spectralinstance ((spectral)(none|instance|batch|syncbatch))"),
        "norm_E": Rule(pattern=NORM_NONSPADE, what="e.g. spectralinstance ((spectral)(none|instance|batch|syncbatch))"),
        "z_dim": Rule(1, 1024),
        "gan_mode": Rule(choices=("hinge", "original", "ls", "w")),
        "lambda_feat": Rule(0, None),
        "lambda_vgg": Rule(0, None),
        "lambda_kld": Rule(0, None),
        "init_type": Rule(choices=("xavier", "normal", "xavier_uniform", "kaiming", "none")),
        "init_variance": Rule(0, None),
        "netG": Rule(choices=("spade", "tsit")),
        "norm_S": Rule(choices=("spectralinstance", "spectralbatch", "spectralsyncbatch", "instance", "batch",
                                "syncbatch")),
        "alpha": Rule(0, 1),
        "clip_dim": Rule(0, 4096),  # 0: no CLIP conditioning
    },
    "data": {
        "dataset": Rule(choices=("landscape", "coco_stuff", "ade20k", "cityscapes", "folder", "synthetic")),
        "load_size": Rule(0, 2 * MAX_IMAGE_SIDE),
        "preprocess_mode": Rule(choices=("", "resize_and_crop", "crop", "scale_width", "scale_width_and_crop",
                                         "scale_shortside", "scale_shortside_and_crop", "fixed", "none")),
        "num_workers": Rule(0, 256),
        "synthetic_n": Rule(1, 10**7),
        "synthetic_seed": Rule(0, 2**32 - 1),
        "holdout_fraction": Rule(0, 1, high_open=True),
        "synthetic_val_n": Rule(0, 10**7),
    },
    "phases": {
        "epochs": Rule(1, MAX_COUNT),
        "batch_size": Rule(1, 4096),
        "lr": Rule(0, 1, low_open=True),
        "decay_epochs": Rule(0, MAX_COUNT),
        "diffaugment": Rule(pattern=DIFFAUGMENT, what="a comma list of color, translation, cutout ('' = off)"),
    },
    "train": {
        "seed": Rule(0, 2**31 - 1),
        "beta1": Rule(0, 1, high_open=True),
        "beta2": Rule(0, 1, high_open=True),
        "max_iters": Rule(0, MAX_COUNT),  # 0: no limit
        "max_minutes": Rule(0, 10**8),  # 0: no limit
        "save_every": Rule(0, MAX_COUNT),  # 0: a snapshot only when the run stops
        "keep_last": Rule(0, MAX_COUNT),
        "restart_on_crash": Rule(0, 1000),
        "sample_every": Rule(0, MAX_COUNT),
        "log_every": Rule(1, MAX_COUNT),
        "num_samples": Rule(0, 64),
        "ema_decay": Rule(0, 1, high_open=True),  # 0: off
        "ema_bn_batches": Rule(0, 10**6),
        "fid_every": Rule(0, MAX_COUNT),
    },
}
_SECTION_CLASSES = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "phases": Phase}


def _field_kinds(section):
    return {f.name: type(f.default) for f in fields(_SECTION_CLASSES[section])}


def describe_rule(kind, rule):
    """What a field accepts, in words (the end of every ConfigError about it)."""
    if kind is bool:
        return "true or false"
    if rule is not None and rule.choices is not None:
        return "one of " + ", ".join(repr(c) if c == "" else c for c in rule.choices)
    if rule is not None and rule.pattern is not None:
        return rule.what
    if kind is str:
        return "text"
    what = "an integer" if kind is int else "a finite number"
    number = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"  # noqa: E731 (1000000000, not 1e+09)
    limits = []
    if rule is not None and rule.low is not None:
        limits.append(f"{'above' if rule.low_open else 'at least'} {number(rule.low)}")
    if rule is not None and rule.high is not None:
        limits.append(f"{'below' if rule.high_open else 'at most'} {number(rule.high)}")
    return what + (", " + " and ".join(limits) if limits else "")


def _config_error(source, key, reason):
    error = ConfigError(f"{source}: {key} {reason}" if source else f"{key} {reason}")
    error.reason = reason  # without source and key: argparse names the flag itself
    return error


def check_value(section, name, value, source="configuration"):
    """`value` for field `name` of `section` ('model', 'data', 'train' or 'phases'), checked against its
    type and rule; returns it (an int as a float where the field is a float). ConfigError otherwise,
    '<source>: [section] name must be ..., got ...'."""
    kinds = _field_kinds(section)
    key = f"[{section}] {name}" if section != "phases" else name
    if name not in kinds:
        known = ", ".join(sorted(kinds))
        error = _config_error(source, f"unknown option {key}", f"(known: {known})")
        error.reason = f"unknown option {name}"
        raise error
    kind, rule = kinds[name], RULES.get(section, {}).get(name)
    allowed = describe_rule(kind, rule)
    fail = lambda: _config_error(source, key, f"must be {allowed}, got {value!r:.60}")  # noqa: E731
    if kind is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if kind is str:
        if not isinstance(value, str):
            raise fail()
        if rule is not None and rule.choices is not None and value not in rule.choices:
            raise fail()
        if rule is not None and rule.pattern is not None and re.fullmatch(rule.pattern, value) is None:
            raise fail()
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise fail()
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise fail()
    if rule is not None:
        if rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low):
            raise fail()
        if rule.high is not None and (value >= rule.high if rule.high_open else value > rule.high):
            raise fail()
    return value


def check_model(m: ModelConfig, source="model options"):
    """Rules between model options (each value already checked on its own)."""
    for f in fields(ModelConfig):  # values set directly on the dataclass (tests, --model-option) too
        check_value("model", f.name, getattr(m, f.name), source)
    width, height = m.image_size
    if not 1 <= height <= MAX_IMAGE_SIDE:
        raise ConfigError(f"{source}: crop_size {m.crop_size} with aspect_ratio {m.aspect_ratio:g} makes images "
                          f"{height} pixels high; the height must be from 1 to {MAX_IMAGE_SIDE}")
    if m.clip_dim and m.netG != "spade":
        raise ConfigError(f"{source}: [model] clip_dim {m.clip_dim} needs netG 'spade' (CLIP modulation is built "
                          f"into SPADE's layers, not {m.netG!r}'s)")
    if m.netG == "spade" and "fade" in m.norm_G:
        raise ConfigError(f"{source}: [model] norm_G {m.norm_G!r} names FADE layers, which only netG 'tsit' has "
                          "(use e.g. spectralspadesyncbatch3x3)")


def check_phase(phase: Phase, source):
    if phase.decay_epochs > phase.epochs:
        raise ConfigError(f"{source}: decay_epochs {phase.decay_epochs} is more than the phase's {phase.epochs} "
                          "epochs")


def check_config(cfg: "Config", source="configuration"):
    """Every value of `cfg` and the rules between them; ConfigError naming `source` for the first
    problem. Run on every configuration before anything is built or created."""
    for section in Config.SECTIONS:
        if section == "model":
            continue
        for f in fields(getattr(cfg, section)):
            check_value(section, f.name, getattr(getattr(cfg, section), f.name), source)
    check_model(cfg.model, source)
    if not isinstance(cfg.phases, list) or not cfg.phases or not all(isinstance(p, Phase) for p in cfg.phases):
        raise ConfigError(f"{source}: phases must be a non-empty list of phases")
    for i, phase in enumerate(cfg.phases):
        where = f"{source}: [[phases]] #{i + 1}"
        for f in fields(Phase):
            check_value("phases", f.name, getattr(phase, f.name), where)
        check_phase(phase, where)
    return cfg

def phases_from_list(items, source):
    """[[phases]] tables -> [Phase], each key and value checked."""
    if not isinstance(items, list) or not items or not all(isinstance(p, dict) for p in items):
        raise ConfigError(f"{source}: phases must be a non-empty list of tables ([[phases]] with epochs, "
                          f"batch_size, lr, ...), got {items!r:.80}")
    phases = []
    for i, item in enumerate(items):
        where = f"{source}: [[phases]] #{i + 1}"
        phases.append(Phase(**{k: check_value("phases", k, v, where) for k, v in item.items()}))
    return phases


def load_config(path):
    """A TOML preset (sections [model], [data], [train] and [[phases]]) over the defaults, checked."""
    import tomllib
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return Config.from_dict(data, source=str(path))


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
    """One `--section.field` flag for every config field (e.g. --model.ngf 32, --train.save_every 200),
    each checked by its rule while parsing (a bad value: exit 2, nothing created)."""
    defaults = Config.default()
    for section in Config.SECTIONS:
        group = parser.add_argument_group(f"[{section}] options (override the preset)")
        for f in fields(getattr(defaults, section)):
            default = getattr(getattr(defaults, section), f.name)
            kind = type(default)
            rule = RULES.get(section, {}).get(f.name)
            allowed = f"; {describe_rule(kind, rule)}" if rule is not None else ""
            group.add_argument(f"--{section}.{f.name}", dest=f"{section}.{f.name}", type=flag_parser(section, f.name),
                               default=None, metavar=kind.__name__.upper(), help=f"(default {default!r}{allowed})")
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
    """`text` as the ModelConfig field `name` holds it; ConfigError naming an unknown option or a bad value."""
    kinds = {f.name: type(f.default) for f in fields(ModelConfig)}
    if name not in kinds:
        raise ConfigError(f"unknown model option {name!r}")
    try:
        value = value_parser(kinds[name])(text)
    except ValueError:
        value = text  # a string where a number or boolean belongs: check_value names what is allowed
    return check_value("model", name, value, "model option")


def flag_parser(section, name):
    """The argparse type of `--section.name`: the text read as the field's type, then its rule checked;
    the message says what is allowed."""
    import argparse

    kind = _field_kinds(section)[name]

    def parse(text):
        try:
            value = value_parser(kind)(text)
        except ValueError:
            value = text
        try:
            return check_value(section, name, value, None)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(error.reason) from None

    parse.__name__ = kind.__name__
    return parse


def apply_overrides(cfg: Config, args) -> Config:
    for key, v in vars(args).items():
        if v is None or "." not in key:
            continue
        section, name = key.split(".", 1)
        if section in Config.SECTIONS:
            setattr(getattr(cfg, section), name, check_value(section, name, v, f"--{key}"))
    if getattr(args, "phases", None):
        cfg.phases = [parse_phase(s) for s in args.phases.split(",")]
    return cfg


def parse_phase(spec: str) -> Phase:
    parts = spec.split(":")
    usage = f"phase {spec!r}: expected EPOCHS:BATCH:LR[:SUBSET[:DECAY]], e.g. 38:2:0.0002"
    if len(parts) < 3 or len(parts) > 5:
        raise ConfigError(usage)
    try:
        phase = Phase(epochs=int(parts[0]), batch_size=int(parts[1]), lr=float(parts[2]),
                      subset=parts[3] if len(parts) > 3 else "", decay_epochs=int(parts[4]) if len(parts) > 4 else 0)
    except ValueError:
        raise ConfigError(f"{usage} (EPOCHS, BATCH and DECAY whole numbers, LR a number)") from None
    for f in fields(Phase):
        check_value("phases", f.name, getattr(phase, f.name), f"phase {spec!r}")
    check_phase(phase, f"phase {spec!r}")
    return phase
