"""Network weights in and out: our own checkpoint files, and the original PyTorch SPADE's
`latest_net_{G,D,E}.pth` (no torch needed). Every file is read through `jspade.safe_load`, which
refuses a pickle that would run code. Loading is strict: every key
must exist with its shape, or the error lists what is missing, unexpected or mis-shaped (Jittor's
own `load_parameters` only logs such problems)."""
import pickle
from pathlib import Path

import numpy as np

from jspade.runtime import jt
from jspade.atomic import atomic_path
from jspade.config import Config
from jspade.errors import ConfigError
from jspade.safe_load import CheckpointError, safe_load  # noqa: F401 (CheckpointError is re-exported)

IGNORED_SUFFIXES = ("num_batches_tracked",)  # PyTorch BN counter; unused with a fixed momentum


def to_numpy(v):
    if isinstance(v, jt.Var):
        return v.numpy()
    if hasattr(v, "detach"):  # a torch tensor, should one be passed
        return v.detach().cpu().numpy()
    return np.asarray(v)


def original_layout(module):
    """[(name, key, part, parts)]: the module's state as the original stores it, in its names and order.
    `key` is the module's own state_dict key; the tensor `name` is its `part`-th of `parts` equal slices
    along the first axis. A submodule with `parts` (normalization.GammaBetaConv2d: SPADE's mlp_gamma and
    mlp_beta in one weight) stands for sibling layers of those names; every other key is itself."""
    stacked = {name: m.parts for name, m in module.named_modules() if getattr(m, "parts", None)}
    keys = list(module.state_dict())
    layout, expanded = [], set()
    for key in keys:
        prefix, _, _ = key.rpartition(".")
        parts = stacked.get(prefix)
        if parts is None:
            layout.append((key, key, 0, 1))
        elif prefix not in expanded:  # all of its parts here, each layer's weight then bias, as the original
            expanded.add(prefix)
            parent = prefix.rpartition(".")[0]
            own = [k for k in keys if k.rpartition(".")[0] == prefix]
            layout += [(".".join(filter(None, (parent, part, k.rpartition(".")[2]))), k, i, len(parts))
                       for i, part in enumerate(parts) for k in own]
    return layout


def part_of(x, part, parts):
    """The `part`-th of `parts` equal slices of x (an array or a Var) along its first axis."""
    if parts == 1:
        return x
    n = x.shape[0] // parts
    return x[part * n:(part + 1) * n]


def state_arrays(module):
    """{name: float32 ndarray} of every parameter and buffer, in the original's names (`original_layout`).
    Copies: a checkpoint must not hold views of memory Jittor may free or reuse while it is written."""
    state, layout = module.state_dict(), original_layout(module)
    arrays = {key: to_numpy(state[key]) for _, key, _, _ in layout}
    return {name: np.array(part_of(arrays[key], part, parts), copy=True) for name, key, part, parts in layout}


def spectral_v_from_weight(weight_orig, weight, u):
    """Recover `weight_v` for a checkpoint saved before PyTorch stored it (it kept `weight` instead):
    solve u = normalize(W v) with u^T W v = sigma, as PyTorch's load hook does (via a pseudo-inverse)."""
    w_mat = weight_orig.reshape(weight_orig.shape[0], -1).astype(np.float64)
    sigma = float(np.mean(weight_orig / weight))
    v = np.linalg.pinv(w_mat.T @ w_mat) @ w_mat.T @ u.astype(np.float64)
    v *= sigma / float(u @ (w_mat @ v))
    return v.astype(np.float32)


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


def numeric_array(value, key, source):
    """`value` as a numeric ndarray with only finite values; CheckpointError naming the key otherwise
    (an object array of Nones would load as NaN and render black images)."""
    try:
        array = to_numpy(value)
    except (TypeError, ValueError):
        array = None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        what = type(value).__name__ if not isinstance(array, np.ndarray) else f"{array.dtype} array"
        raise CheckpointError(f"{source}: {key} holds {what}, not numbers")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise CheckpointError(f"{source}: {key} holds NaN or infinite values")
    return array


def load_state_strict(module, state, source="checkpoint"):
    """Copy `state` into `module`; raise CheckpointError unless keys and shapes match exactly and
    every value is a finite number."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: the weights are {type(state).__name__}, not a table of arrays")
    own = module.state_dict()
    layout = original_layout(module)
    wanted = {name: tuple(own[key].shape) if parts == 1 else (own[key].shape[0] // parts, *own[key].shape[1:])
              for name, key, part, parts in layout}
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    state = {k: numeric_array(v, k, source) for k, v in state.items()}
    state = _fill_spectral_v(state, wanted)
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    mismatched = [f"{k}: {tuple(to_numpy(state[k]).shape)} in {source}, {tuple(wanted[k])} in the model"
                  for k in sorted(set(wanted) & set(state))
                  if tuple(to_numpy(state[k]).shape) != tuple(wanted[k])]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit {type(module).__name__}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12]) + (" ..." if len(items) > 12 else ""))
        raise CheckpointError("\n".join(lines))
    pieces = {}
    for name, key, part, parts in layout:  # parts in order
        pieces.setdefault(key, []).append(to_numpy(state[name]).astype(np.float32))
    for key, var in own.items():
        var.update(jt.array(np.concatenate(pieces[key]) if len(pieces[key]) > 1 else pieces[key][0]))
    # Materialise now: an unexecuted 1-element array op (e.g. a 1-channel conv bias) fused into a
    # later kernel trips a Jittor 1.3.11 code-generation bug.
    jt.sync(list(own.values()))
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
    return write_checkpoint(path, payload)


def write_checkpoint(path, payload):
    """Write a checkpoint payload (a dict of plain data and arrays) atomically."""
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


def checkpoint_config(payload, path):
    """The Config a read checkpoint was made with, checked by the same rules as a preset or the
    command line, before any network is built (CheckpointError naming the file otherwise)."""
    if "config" not in payload:
        raise CheckpointError(f"{path} holds no configuration (no 'config' entry): it cannot say which model "
                              "to build")
    try:
        return Config.from_dict(payload["config"], source=f"{path} [config]")
    except ConfigError as error:
        raise CheckpointError(str(error)) from None


def load_networks(payload, model, networks=("G", "D", "E"), source="checkpoint", ema=False):
    """Load the named networks that the model has from a read checkpoint payload, strictly; with `ema`,
    their EMA copies ("ema_networks")."""
    held, which = (payload["ema_networks"], "ema ") if ema else (payload["networks"], "")
    for name, net in model.networks().items():
        if name not in networks:
            continue
        if name not in held:
            raise CheckpointError(f"{source} holds no {which}weights for net{name}")
        load_state_strict(net, held[name], source=f"{source} [{which}{name}]")
    return payload


def load_checkpoint(path, model, networks=("G", "D", "E")):
    """Load the named networks that the model has from our checkpoint; returns the payload."""
    return load_networks(read_checkpoint(path), model, networks, source=str(path))


def top_singular_pair(weight, u_hint):
    """The u, v a converged power iteration reaches for `weight` (its top singular vectors), with
    the sign that matches the averaged u so the layer's behaviour is continuous."""
    w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    U, _, Vt = np.linalg.svd(w, full_matrices=False)
    u, v = U[:, 0], Vt[0]
    if u @ u_hint < 0:
        u, v = -u, -v
    return u.astype(np.float32), v.astype(np.float32)


def average_networks(states):
    """The mean of several state dicts of one network; spectral-norm u, v are recomputed for the
    averaged weight (averaged u, v would not belong to it)."""
    names = set(states[0])
    for s in states[1:]:
        if set(s) != names:
            raise CheckpointError("the checkpoints hold different layers; they must come from the same model")
    avg = {k: np.mean([s[k].astype(np.float64) for s in states], axis=0).astype(np.float32) for k in names}
    for k in names:
        if k.endswith(".weight_u"):
            prefix = k[: -len("_u")]
            avg[k], avg[prefix + "_v"] = top_singular_pair(avg[prefix + "_orig"], avg[k])
    return avg


def average_checkpoints(paths, out, overwrite=False, use_ema=True):
    """Write to `out` a checkpoint whose G (and E) are the mean of those of `paths` (one run's
    checkpoints, same model options, else CheckpointError); returns the averaged network names.
    When every checkpoint has EMA weights they are averaged too (unless not `use_ema`). D and the
    optimiser state are left out: the result is for inference. An existing `out` is refused
    (FileExistsError) unless `overwrite`."""
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    payloads = [read_checkpoint(p) for p in paths]
    models = [checkpoint_config(payload, p).to_dict()["model"] for payload, p in zip(payloads, paths)]
    if any(m != models[0] for m in models[1:]):
        raise CheckpointError("the checkpoints were trained with different model options")
    networks = {name: average_networks([p["networks"][name] for p in payloads])
                for name in ("G", "E") if name in payloads[0]["networks"]}
    result = {"format": payloads[0]["format"], "networks": networks, "config": payloads[-1]["config"],
              "averaged_from": [str(p) for p in paths]}
    with_ema = [bool(p.get("ema_networks")) for p in payloads]
    if use_ema and any(with_ema):
        if not all(with_ema):
            raise CheckpointError("some checkpoints have EMA weights and some do not: pass --no-ema to "
                                  "average the raw ones")
        result["ema_networks"] = {name: average_networks([p["ema_networks"][name] for p in payloads])
                                  for name in networks}
    write_checkpoint(out, result)
    return list(networks)
