"""Network weights in and out: our own checkpoint files, and the original PyTorch SPADE's
`latest_net_{G,D,E}.pth` (no torch needed). Every file is read through `jspade.safe_load`, which
refuses a pickle that would run code. Loading is strict: every key
must exist with its shape, or the error lists what is missing, unexpected or mis-shaped (Jittor's
own `load_parameters` only logs such problems)."""
import pickle
from pathlib import Path

import numpy as np

from jspade.runtime import jt
from jspade.io import atomic_path
from jspade.models.normalization import spectral_v_from_weight
from jspade.safe_load import CheckpointError, safe_load  # noqa: F401 (CheckpointError is re-exported)

IGNORED_SUFFIXES = ("num_batches_tracked",)  # PyTorch BN counter; unused with a fixed momentum


def to_numpy(v):
    if isinstance(v, jt.Var):
        return v.numpy()
    if hasattr(v, "detach"):  # a torch tensor, should one be passed
        return v.detach().cpu().numpy()
    return np.asarray(v)


def state_arrays(module):
    """{name: float32 ndarray} of every parameter and buffer, PyTorch-style names."""
    return {k: to_numpy(v) for k, v in module.state_dict().items()}


def _fill_spectral_v(state, wanted):
    """Checkpoints from PyTorch < 1.1 store `weight` instead of `weight_v`: recover v as PyTorch does."""
    state = dict(state)
    for key in wanted:
        if key.endswith(".weight_v") and key not in state:
            prefix = key[: -len("_v")]
            if all(prefix + s in state for s in ("_orig", "_u", "")):
                state[key] = spectral_v_from_weight(to_numpy(state[prefix + "_orig"]),
                                                    to_numpy(state[prefix]), to_numpy(state[prefix + "_u"]))
                del state[prefix]
    return state


def load_state_strict(module, state, source="checkpoint"):
    """Copy `state` into `module`; raise CheckpointError unless keys and shapes match exactly."""
    wanted = module.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    state = _fill_spectral_v(state, wanted)
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    mismatched = [f"{k}: {tuple(to_numpy(state[k]).shape)} in {source}, {tuple(wanted[k].shape)} in the model"
                  for k in sorted(set(wanted) & set(state))
                  if tuple(to_numpy(state[k]).shape) != tuple(wanted[k].shape)]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit {type(module).__name__}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12]) + (" ..." if len(items) > 12 else ""))
        raise CheckpointError("\n".join(lines))
    for k, var in wanted.items():
        var.update(jt.array(to_numpy(state[k]).astype(np.float32)))
    # Materialise now: an unexecuted 1-element array op (e.g. a 1-channel conv bias) fused into a
    # later kernel trips a Jittor 1.3.11 code-generation bug.
    jt.sync(list(wanted.values()))
    return module


def read_pytorch_state(path):
    """A PyTorch state dict file -> {name: ndarray}."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    raw = safe_load(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return {k: to_numpy(v) for k, v in raw.items()}


def import_pytorch_checkpoint(model, folder, which="latest"):
    """Load the original repository's `<folder>/<which>_net_{G,D,E}.pth` into a SPADEModel.
    G is required; D and E are loaded when the model has them and the files exist."""
    folder = Path(folder)
    for name, net in model.networks().items():
        path = folder / f"{which}_net_{name}.pth"
        if name != "G" and not path.exists():
            continue
        load_state_strict(net, read_pytorch_state(path), source=str(path))
    return model


def save_checkpoint(path, model, extra=None, networks=None):
    """One pickle holding the arrays of every network of `model` (or only those named in
    `networks`) plus `extra` (optimiser state, position, config...), written atomically."""
    payload = {"format": "jspade-checkpoint-1",
               "networks": {name: state_arrays(net) for name, net in model.networks().items()
                            if networks is None or name in networks}}
    payload.update(extra or {})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(payload, f, protocol=4)
    return Path(path)


def read_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    payload = safe_load(path)
    if (not isinstance(payload, dict) or payload.get("format") != "jspade-checkpoint-1"
            or not isinstance(payload.get("networks"), dict)):
        raise CheckpointError(f"{path} is not a jspade checkpoint")
    return payload


def load_networks(payload, model, networks=("G", "D", "E"), source="checkpoint"):
    """Load the named networks that the model has from a read checkpoint payload, strictly."""
    for name, net in model.networks().items():
        if name not in networks:
            continue
        if name not in payload["networks"]:
            raise CheckpointError(f"{source} holds no weights for net{name}")
        load_state_strict(net, payload["networks"][name], source=f"{source} [{name}]")
    return payload


def load_checkpoint(path, model, networks=("G", "D", "E")):
    """Load the named networks that the model has from our checkpoint; returns the payload."""
    return load_networks(read_checkpoint(path), model, networks, source=str(path))
