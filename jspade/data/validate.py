"""Check a whole dataset before training and report every problem instead of stopping at the first.

    problems = validate_dataset("landscape", "data/train")     # [] when the data is usable
    for p in problems: print(p)                                 # "<file or stem>: <reason>"

Finds: missing pairs (named by stem), duplicate stems, unknown subset stems, unreadable or corrupt
files, label/photo/instance size mismatches, and class ids out of range (file and ids named).
It uses the dataset classes themselves (`strict=False`), so it checks exactly what training reads.
"""
import numpy as np
from tqdm import tqdm

from jspade.data.datasets import build_dataset
from jspade.data.readers import DataError, Problem, open_image, read_label
from jspade.data.transforms import get_params

__all__ = ["Problem", "validate_dataset", "validate_samples"]


def validate_dataset(name, root, progress=False, **opts):
    """All problems of dataset `name` at `root` (opts as for `build_dataset`), as a list of Problem."""
    try:
        dataset = build_dataset(name, root, strict=False, **opts)
    except (DataError, OSError) as error:  # layout not found at all
        return [Problem(str(root), str(error), error.kind if isinstance(error, DataError) else "unreadable")]
    return list(dataset.problems) + validate_samples(dataset, progress)


def validate_samples(dataset, progress=False):
    """Read every sample's files once and report what `__getitem__` would fail on (or silently
    misread). Photos are fully decoded, since a truncated JPEG only fails when decoded."""
    problems = []
    crop_checked = set()  # picture sizes already checked against the crop (one report per size)
    for sample in tqdm(dataset.samples, desc="validating", unit="sample", disable=not progress):
        try:
            raw = read_label(sample.label_path)
        except DataError as error:
            problems.append(Problem(str(sample.label_path), _reason(error), error.kind))
            raw = None
        if raw is not None:
            _, problem = dataset.check_label_ids(raw)
            if problem:
                problems.append(Problem(str(sample.label_path), problem, "bad_class_id"))
        label_size = None if raw is None else (raw.shape[1], raw.shape[0])
        others = []
        if dataset.has_images:
            others.append(("image", sample.image_path))
        if dataset.use_instance:
            others.append(("instance map", sample.instance_path))
        for what, path in others:
            try:
                size = _decoded_size(path)
            except DataError as error:
                problems.append(Problem(str(path), _reason(error), error.kind))
                continue
            if label_size is not None and size != label_size:
                problems.append(Problem(str(path), (
                    f"{what} size {size[0]}x{size[1]} differs from label {sample.label_path.name} "
                    f"({label_size[0]}x{label_size[1]})"), "size_mismatch"))
        if label_size is not None and label_size not in crop_checked:
            crop_checked.add(label_size)
            try:  # the crop must fit inside the resized picture
                get_params(dataset.preprocess, label_size, np.random.default_rng(0))
            except DataError as error:
                problems.append(Problem(str(sample.label_path), str(error), error.kind))
    return problems


def _decoded_size(path):
    return open_image(path).size


def _reason(error):
    """The error message without the leading '<path>: ' (the Problem already names the file)."""
    text = str(error)
    if error.path and text.startswith(error.path + ": "):
        return text[len(error.path) + 2:]
    return text
