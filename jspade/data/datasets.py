"""Paired label-map / photo datasets, one class per on-disk layout (see datasets/README.md).

Mirrors the original SPADE: `Pix2pixDataset` does the loading and each subclass only says where the
files are (`get_paths`) and what its defaults are (`dataset_defaults`, the original's
`modify_commandline_options`). Files are paired by stem, not by sorted position, so one missing
file cannot shift every later pair.

Item convention (`dataset[i]`, numpy):
  label     int64 [1, H, W]  class ids in [0, label_nc); the dontcare id is label_nc (only when
                             contain_dontcare_label, e.g. COCO-Stuff raw 255, ADE20K raw 0)
  instance  int32 [1, H, W]  instance ids -- key PRESENT ONLY WHEN `dataset.use_instance`
  image     float32 [3, H, W] RGB in [-1, 1] -- key PRESENT ONLY WHEN `dataset.has_images`
                             (absent in labels-only mode, e.g. the contest test labels)
  stem      str              file name without extension (Cityscapes: city_seq_frame)
So `"instance" in batch` / `"image" in batch` tell whether they are used. Batched by
`dataset.set_attrs(batch_size=..., shuffle=...)`, arrays become jt.Vars with a leading batch axis
(Jittor stores int64 as int32: a batch's `label` is int32) and `stem` a list of str.

As everywhere in Jittor, `len(dataset)` is the number of BATCHES; the number of samples is
`dataset.total_len` (== len(dataset.samples)).

Randomness (crop, flip) is drawn from numpy.random.default_rng((seed, epoch, index)): `dataset[i]`
is reproducible, and the epoch advances after each full pass (or `set_epoch(e)` when resuming).
"""
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from jspade.data.readers import (IMAGE_EXTENSIONS, LABEL_EXTENSIONS, DataError, Problem, list_files,
                                 natural_key, read_image, read_instance, read_label)
from jspade.data.labels import LANDSCAPE_LABEL_NC, label_id_problem
from jspade.data.transforms import (PreprocessOptions, get_params, transform_image, transform_instance,
                                    transform_label)
from jspade.runtime import jt

DONTCARE_VALUE = 255  # raw value of 'unlabeled' in COCO-Stuff and the original's other datasets


class Sample(NamedTuple):
    stem: str
    label_path: Path
    image_path: Optional[Path]
    instance_path: Optional[Path]


def read_subset(path):
    """Stems listed in a subset file: one per line; blank lines and '#' comments are ignored."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: subset file not found", path)
    stems = []
    for line in path.read_text().splitlines():
        stem = line.split("#", 1)[0].strip()
        if stem and stem not in stems:
            stems.append(stem)
    return stems


class Pix2pixDataset(jt.dataset.Dataset):
    """Base of all layouts: pairs files by stem, reads, checks ids and preprocesses one sample.

    Options keep the original SPADE names; `None` means "this dataset's default".
    strict=False keeps the complete pairs and records what is missing in `self.problems` instead
    of raising (used by `jspade.data.validate`).
    """

    def __init__(self, root, phase="train", *, label_nc=None, load_size=None, crop_size=None,
                 aspect_ratio=None, preprocess_mode=None, no_flip=False, no_instance=None,
                 contain_dontcare_label=None, subset=None, seed=0, strict=True):
        super().__init__()
        self.root = Path(root) if root is not None else None
        self.phase = phase
        is_train = phase == "train"
        options = self.dataset_defaults(is_train)
        given = dict(label_nc=label_nc, load_size=load_size, crop_size=crop_size,
                     aspect_ratio=aspect_ratio, preprocess_mode=preprocess_mode,
                     no_instance=no_instance, contain_dontcare_label=contain_dontcare_label)
        options.update({k: v for k, v in given.items() if v is not None})
        if options.get("label_nc") is None:
            raise ValueError(f"{type(self).__name__} needs label_nc")
        self.label_nc = int(options["label_nc"])
        self.contain_dontcare_label = bool(options["contain_dontcare_label"])
        self.preprocess = PreprocessOptions(options["preprocess_mode"], options["load_size"], options["crop_size"],
                                            options["aspect_ratio"], no_flip, is_train)
        self.seed = seed
        self.epoch = 0

        label_paths, image_paths, instance_paths = self.get_paths()
        if not options["no_instance"] and instance_paths is None:
            raise DataError(f"{type(self).__name__} at {root} has no instance maps; use no_instance=True")
        self.use_instance = not options["no_instance"]
        self.has_images = image_paths is not None
        self.samples, self.problems = self.pair_paths(
            label_paths, image_paths, instance_paths if self.use_instance else None,
            read_subset(subset) if subset else None, subset)
        if strict and self.problems:
            shown = "\n  ".join(str(p) for p in self.problems[:20])
            more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
            raise DataError(f"{len(self.problems)} problem(s) in the dataset at {root}:\n  {shown}{more}")
        self.set_attrs(total_len=len(self.samples))

    # ---- what subclasses provide -------------------------------------------------------------
    @staticmethod
    def dataset_defaults(is_train):
        """Option defaults of this dataset (the original's modify_commandline_options)."""
        return dict(label_nc=None, contain_dontcare_label=False, no_instance=True,
                    preprocess_mode="resize_and_crop", load_size=286 if is_train else 256,
                    crop_size=256, aspect_ratio=1.0)

    def get_paths(self):
        """(label_paths, image_paths or None for labels-only, instance_paths or None)."""
        raise NotImplementedError

    def stem_of(self, path):
        return Path(path).stem

    def map_label_ids(self, raw):
        """Raw ids (int32 HxW) -> (training ids int32, mask of invalid raw ids)."""
        ids = raw
        invalid = (raw < 0) | (raw >= self.label_nc)
        if self.contain_dontcare_label:
            dontcare = raw == DONTCARE_VALUE
            if dontcare.any():
                ids = np.where(dontcare, self.label_nc, raw).astype(np.int32)
                invalid &= ~dontcare
        return ids, invalid

    # ---- pairing -----------------------------------------------------------------------------
    def _index(self, paths, what, problems):
        by_stem = {}
        for path in paths:
            stem = self.stem_of(path)
            if stem in by_stem:
                problems.append(Problem(str(path), f"second {what} for stem {stem!r} (also {by_stem[stem]})",
                                        "duplicate_stem"))
            else:
                by_stem[stem] = path
        return by_stem

    def pair_paths(self, label_paths, image_paths, instance_paths, subset=None, subset_path=None):
        """Pair files by stem; returns (samples, problems) with one problem per missing file."""
        problems = []
        labels = self._index(label_paths, "label", problems)
        images = None if image_paths is None else self._index(image_paths, "image", problems)
        instances = None if instance_paths is None else self._index(instance_paths, "instance map", problems)
        if not labels:  # (then every photo would also be reported unpaired)
            return [], problems + [Problem(str(self.root), "no label files found", "integrity")]
        stems = set(labels) | set(images or ())
        if subset is not None:
            for stem in subset:
                if stem not in stems:
                    problems.append(Problem(stem, f"listed in subset file {subset_path} but no such label/image",
                                            "integrity"))
            stems &= set(subset)
        samples = []
        for stem in sorted(stems, key=natural_key):
            if stem not in labels:
                problems.append(Problem(stem, f"missing pair: image {images[stem]} has no label file", "missing_pair"))
            elif images is not None and stem not in images:
                problems.append(Problem(stem, f"missing pair: label {labels[stem]} has no image file", "missing_pair"))
            elif instances is not None and stem not in instances:
                problems.append(Problem(stem, f"label {labels[stem]} has no instance map", "integrity"))
            else:
                samples.append(Sample(stem, labels[stem], images[stem] if images is not None else None,
                                      instances[stem] if instances is not None else None))
        return samples, problems

    # ---- loading -----------------------------------------------------------------------------
    @property
    def num_label_ids(self):
        """Training ids an item's label may hold: the classes (+ the dontcare id label_nc)."""
        return self.label_nc + int(self.contain_dontcare_label)

    @property
    def semantic_nc(self):
        """Channels of the generator's input: the label ids + instance edge map."""
        return self.num_label_ids + int(self.use_instance)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        if hasattr(self, "workers"):
            self.reset()  # worker processes hold a copy of self: restart them to see the new epoch

    def __iter__(self):
        yield from super().__iter__()
        self.set_epoch(self.epoch + 1)

    def collate_batch(self, batch):
        collated = super().collate_batch(batch)
        # Jittor turns int64 into int32 in the main process but keeps int64 from worker processes:
        # batch labels as int32 either way.
        collated["label"] = collated["label"].astype(np.int32)
        return collated

    def check_label_ids(self, raw):
        """Raw ids as read -> (training ids, None) or (.., the reason some are out of range)."""
        ids, invalid = self.map_label_ids(raw)
        return ids, label_id_problem(raw, invalid, self.accepted_ids)

    @property
    def accepted_ids(self):
        """The raw ids this dataset accepts, in words (for error messages)."""
        dontcare = f", {DONTCARE_VALUE} = dontcare" if self.contain_dontcare_label else ", no dontcare id"
        return f"label_nc={self.label_nc}: raw ids 0..{self.label_nc - 1}{dontcare}"

    def load_label(self, sample):
        """Read a label map and map it to training ids; raises DataError on an out-of-range id."""
        ids, problem = self.check_label_ids(read_label(sample.label_path))
        if problem:
            raise DataError(f"{sample.label_path}: {problem}", sample.label_path, "bad_class_id")
        return ids

    def __getitem__(self, index):
        sample = self.samples[index]
        label = self.load_label(sample)
        height, width = label.shape
        rng = np.random.default_rng((self.seed, self.epoch, index))
        try:
            params = get_params(self.preprocess, (width, height), rng)
        except DataError as error:
            raise DataError(f"{sample.label_path}: {error}", sample.label_path) from error
        item = {"label": transform_label(label, self.preprocess, params)}
        if self.use_instance:
            instance = read_instance(sample.instance_path)
            _check_same_size(sample.instance_path, instance.shape, sample.label_path, label.shape)
            item["instance"] = transform_instance(instance, self.preprocess, params)
        if self.has_images:
            image = read_image(sample.image_path)
            _check_same_size(sample.image_path, image.shape[:2], sample.label_path, label.shape)
            item["image"] = transform_image(image, self.preprocess, params)
        item["stem"] = sample.stem
        return item

    def __repr__(self):
        return (f"{type(self).__name__}(root={str(self.root)!r}, phase={self.phase!r}, "
                f"samples={len(self.samples)}, label_nc={self.label_nc}, {self.preprocess})")


def _check_same_size(path, shape, label_path, label_shape):
    if tuple(shape) != tuple(label_shape):
        raise DataError(f"{path}: size {shape[1]}x{shape[0]} differs from its label {label_path} "
                        f"({label_shape[1]}x{label_shape[0]})", path, "size_mismatch")


class LandscapeDataset(Pix2pixDataset):
    """Jittor landscape contest: `<root>/imgs/<stem>.jpg` + `<root>/labels/<stem>.png`, 29 classes.

    `root` may also be the parent of `<phase>/imgs`, or a folder holding label PNGs directly, which
    is labels-only mode (the contest's test input; items then have no 'image'). labels_only=True
    ignores the photos of a paired layout.
    """

    def __init__(self, root, phase="train", *, labels_only=False, **opts):
        self.labels_only = labels_only
        super().__init__(root, phase, **opts)

    @staticmethod
    def dataset_defaults(is_train):
        # The contest's 1024x768 photos are generated at 512x384.
        return dict(label_nc=LANDSCAPE_LABEL_NC, contain_dontcare_label=False, no_instance=True,
                    preprocess_mode="fixed", load_size=512, crop_size=512, aspect_ratio=4 / 3)

    def get_paths(self):
        root = self.root
        if not (root / "labels").is_dir() and (root / self.phase / "labels").is_dir():
            root = root / self.phase
        if (root / "labels").is_dir():
            images = None if self.labels_only else list_files(root / "imgs", IMAGE_EXTENSIONS)
            return list_files(root / "labels", LABEL_EXTENSIONS), images, None
        if root.is_dir() and not (root / "imgs").is_dir():
            return list_files(root, LABEL_EXTENSIONS), None, None  # labels-only
        raise DataError(f"{self.root}: expected imgs/ and labels/ (or a folder of label PNGs)", self.root)


class CocoStuffDataset(Pix2pixDataset):
    """COCO-Stuff as in the original: `<root>/{train,val}_{img,label,inst}/`, 182 classes, 255 = dontcare."""

    @staticmethod
    def dataset_defaults(is_train):
        return {**Pix2pixDataset.dataset_defaults(is_train), "label_nc": 182, "contain_dontcare_label": True,
                "no_instance": False}

    def get_paths(self):
        phase = "val" if self.phase == "test" else self.phase
        inst_dir = self.root / f"{phase}_inst"
        return (list_files(self.root / f"{phase}_label", LABEL_EXTENSIONS),
                list_files(self.root / f"{phase}_img", IMAGE_EXTENSIONS),
                list_files(inst_dir, LABEL_EXTENSIONS) if inst_dir.is_dir() else None)


class ADE20KDataset(Pix2pixDataset):
    """ADEChallengeData2016: `images/{training,validation}/*.jpg` + `annotations/{...}/*.png`.

    Raw ids are 1..150 with 0 = unlabeled; as in the original they are shifted down by one and
    0 becomes the dontcare id 150.
    """

    @staticmethod
    def dataset_defaults(is_train):
        return {**Pix2pixDataset.dataset_defaults(is_train), "label_nc": 150, "contain_dontcare_label": True}

    def get_paths(self):
        split = "training" if self.phase == "train" else "validation"
        return (list_files(self.root / "annotations" / split, LABEL_EXTENSIONS),
                list_files(self.root / "images" / split, IMAGE_EXTENSIONS), None)

    def map_label_ids(self, raw):
        invalid = (raw < 0) | (raw > self.label_nc)
        return np.where(raw == 0, self.label_nc, raw - 1).astype(np.int32), invalid

    @property
    def accepted_ids(self):
        return f"label_nc={self.label_nc}: raw ids 1..{self.label_nc}, 0 = dontcare"


class CityscapesDataset(Pix2pixDataset):
    """Cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png`, `gtFine/<split>/<city>/*_gtFine_labelIds.png`
    and `*_gtFine_instanceIds.png`; 35 classes, no dontcare, instance maps used (as the original)."""

    @staticmethod
    def dataset_defaults(is_train):
        return dict(label_nc=35, contain_dontcare_label=False, no_instance=False,
                    preprocess_mode="fixed", load_size=512, crop_size=512, aspect_ratio=2.0)

    def get_paths(self):
        split = "val" if self.phase == "test" else self.phase
        label_all = list_files(self.root / "gtFine" / split, LABEL_EXTENSIONS, recursive=True)
        return ([p for p in label_all if p.name.endswith("_labelIds.png")],
                [p for p in list_files(self.root / "leftImg8bit" / split, IMAGE_EXTENSIONS, recursive=True)
                 if p.name.endswith("_leftImg8bit.png")],
                [p for p in label_all if p.name.endswith("_instanceIds.png")])

    def stem_of(self, path):
        return "_".join(Path(path).name.split("_")[:3])  # city_sequence_frame


class FolderDataset(Pix2pixDataset):
    """Any layout: `label_dir`, `image_dir` (None = labels-only), optional `instance_dir`.

    Relative directories are taken inside `root` (which may be None). label_nc is required.
    """

    def __init__(self, root=None, phase="train", *, label_dir, image_dir=None, instance_dir=None, **opts):
        base = Path(root) if root is not None else Path()
        self.label_dir = base / label_dir
        self.image_dir = None if image_dir is None else base / image_dir
        self.instance_dir = None if instance_dir is None else base / instance_dir
        opts.setdefault("no_instance", instance_dir is None)
        super().__init__(root if root is not None else self.label_dir, phase, **opts)

    def get_paths(self):
        return (list_files(self.label_dir, LABEL_EXTENSIONS),
                None if self.image_dir is None else list_files(self.image_dir, IMAGE_EXTENSIONS),
                None if self.instance_dir is None else list_files(self.instance_dir, LABEL_EXTENSIONS))


DATASETS = {
    "landscape": LandscapeDataset,
    "coco_stuff": CocoStuffDataset,
    "ade20k": ADE20KDataset,
    "cityscapes": CityscapesDataset,
    "folder": FolderDataset,
}


def build_dataset(name, root, **opts) -> Pix2pixDataset:
    """`build_dataset('landscape', 'data/train', crop_size=256, ...)`; names are the keys of DATASETS."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](root, **opts)
