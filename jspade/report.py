"""A run's report: one self-contained HTML page (`<run>/report.html`) with the loss curves, the FID
curve, the learning rate per phase and the sample grids over time, drawn from the run folder's
log.jsonl, samples/ and config.toml. The trainer refreshes it at each sample step; `scripts/report.py`
makes it for any run folder."""
import base64
import html
import io
import json
from pathlib import Path

from jspade.atomic import write_bytes_atomic
from jspade.errors import JspadeError

REPORT_FILE = "report.html"
MAX_GRIDS = 12  # sample grids shown, evenly spaced over the run
D_LOSSES = ("D_Fake", "D_real")


class ReportError(JspadeError, ValueError):
    pass


def read_log(run_dir):
    """(loss records, FID records) of `<run>/log.jsonl`; a line cut short by a crash is skipped."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise ReportError(f"{run_dir} has no log.jsonl: not a jspade run folder, or nothing logged yet")
    losses, fids = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "losses" in record:
            losses.append(record)
        elif "fid" in record:
            fids.append(record)
    return losses, fids


def _png(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _charts(losses, fids):
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    charts = []
    if losses:
        fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
        names = sorted({k for r in losses for k in r["losses"]})
        for ax, title, keep in ((axes[0], "generator losses", lambda k: k not in D_LOSSES),
                                (axes[1], "discriminator losses", lambda k: k in D_LOSSES)):
            for name in filter(keep, names):
                points = [(r["iter"], r["losses"][name]) for r in losses if name in r["losses"]]
                ax.plot(*zip(*points), label=name, linewidth=1, marker="." if len(points) < 30 else None)
            ax.set_title(title)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        charts.append(("Losses", _png(fig)))
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 3.2))
        for phase in sorted({r["phase"] for r in losses}):
            points = [(r["iter"], r["lr"]) for r in losses if r["phase"] == phase]
            ax.plot(*zip(*points), label=f"phase {phase}", drawstyle="steps-post",
                    marker="." if len(points) < 30 else None)
        ax.set_title("learning rate (before TTUR: G uses lr/2, D lr*2)")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        charts.append(("Learning rate per phase", _png(fig)))
        plt.close(fig)
    if fids:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        iters, values = [r["iter"] for r in fids], [r["fid"] for r in fids]
        ax.plot(iters, values, marker="o")
        best = min(range(len(values)), key=values.__getitem__)
        ax.annotate(f"best {values[best]:.2f}", (iters[best], values[best]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8)
        ax.set_title("FID on the held-out set")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        charts.append(("FID", _png(fig)))
        plt.close(fig)
    return charts


def _grids(run_dir):
    grids = sorted((Path(run_dir) / "samples").glob("*.jpg"))
    if len(grids) > MAX_GRIDS:
        step = (len(grids) - 1) / (MAX_GRIDS - 1)
        grids = [grids[round(i * step)] for i in range(MAX_GRIDS)]
    return grids


def write_report(run_dir):
    """Write `<run>/report.html` (atomically) and return its path."""
    run_dir = Path(run_dir)
    losses, fids = read_log(run_dir)
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{e(run_dir.name)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1300px}img{max-width:100%}"
             "figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}"
             "figcaption{font-size:90%;color:#555}pre{background:#f4f4f4;padding:1em}</style>",
             f"<h1>{e(run_dir.name)}</h1>"]
    summary = []
    if losses:
        last = losses[-1]
        summary.append(f"last logged: iteration {last['iter']} (phase {last['phase']}, epoch {last['epoch']}), "
                       f"{last['time'] / 60:.1f} min")
    if fids:
        best = min(fids, key=lambda r: r["fid"])
        summary.append(f"FID {fids[-1]['fid']:.2f} at iteration {fids[-1]['iter']}; best {best['fid']:.2f} "
                       f"at iteration {best['iter']} (checkpoints/best_fid.pkl)")
    parts += [f"<p>{e(s)}</p>" for s in summary] or ["<p>nothing logged yet</p>"]
    for title, uri in _charts(losses, fids):
        parts.append(f"<h2>{e(title)}</h2><img src='{uri}' alt='{e(title)}'>")
    grids = _grids(run_dir)
    if grids:
        parts.append("<h2>Samples over time</h2><p>coloured label | generated | real</p>")
        parts += [f"<figure><img src='samples/{e(p.name)}' alt='{e(p.stem)}'><figcaption>{e(p.stem)}"
                  "</figcaption></figure>" for p in grids]
    config = run_dir / "config.toml"
    if config.is_file():
        parts.append(f"<h2>Configuration</h2><pre>{e(config.read_text())}</pre>")
    out = run_dir / REPORT_FILE
    write_bytes_atomic(out, "\n".join(parts).encode())
    return out
