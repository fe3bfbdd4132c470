"""Average the generator (and encoder) weights of several checkpoints of one run into a new one,
a trick that improved FID for strong contest teams.

  python scripts/average_checkpoints.py results/run/checkpoints/iter_00{50,55,60}000.pkl --out avg.pkl

Parameters and running statistics are averaged; each spectral-norm layer's u, v are then set to the
top singular vectors of the averaged weight (averaged u, v would not belong to it). The discriminator
and optimiser state are not averaged: the result is for inference (infer.py, evaluate.py). When every
checkpoint has EMA weights, those are averaged too (and rendered by default); --no-ema leaves them out.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jspade import cli  # noqa: E402


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
    names = set(states[0])
    for s in states[1:]:
        if set(s) != names:
            raise ValueError("the checkpoints hold different layers; they must come from the same model")
    avg = {k: np.mean([s[k].astype(np.float64) for s in states], axis=0).astype(np.float32) for k in names}
    for k in names:
        if k.endswith(".weight_u"):
            prefix = k[: -len("_u")]
            avg[k], avg[prefix + "_v"] = top_singular_pair(avg[prefix + "_orig"], avg[k])
    return avg


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoints", nargs="+", type=cli.existing_path("file"),
                    help="jspade checkpoint files (.pkl) of one run")
    ap.add_argument("--out", required=True, type=cli.output_file, help="the averaged checkpoint to write")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ap.add_argument("--no-ema", action="store_true",
                    help="average only the raw weights, leaving the checkpoints' EMA weights out of --out")
    args = ap.parse_args(argv)
    if len(args.checkpoints) < 2:
        ap.error("give at least two checkpoints")
    if args.out.exists() and not args.overwrite:
        ap.error(f"{args.out} exists; pass --overwrite to replace it")

    import pickle

    from jspade.checkpoint import read_checkpoint
    from jspade.io import atomic_path

    payloads = [read_checkpoint(p) for p in args.checkpoints]
    models = [p["config"]["model"] for p in payloads]
    if any(m != models[0] for m in models[1:]):
        ap.error("the checkpoints were trained with different model options")
    networks = {}
    for name in ("G", "E"):
        if name in payloads[0]["networks"]:
            networks[name] = average_networks([p["networks"][name] for p in payloads])
    out = {"format": payloads[0]["format"], "networks": networks, "config": payloads[-1]["config"],
           "averaged_from": [str(p) for p in args.checkpoints]}
    with_ema = [bool(p.get("ema_networks")) for p in payloads]
    if any(with_ema) and not all(with_ema) and not args.no_ema:
        ap.error("some checkpoints have EMA weights and some do not: pass --no-ema to average the raw ones")
    if all(with_ema) and not args.no_ema:
        out["ema_networks"] = {name: average_networks([p["ema_networks"][name] for p in payloads])
                               for name in networks}
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(out, f, protocol=4)
    print(f"averaged {len(payloads)} checkpoints ({', '.join(networks)}"
          + (", with their EMA weights" if "ema_networks" in out else "") + f") into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
