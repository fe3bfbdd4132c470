"""The demo against the original PyTorch SPADE, trained on the same data for the same minutes.

  python scripts/compare_training.py --original /path/to/NVlabs/SPADE --torch-python /path/to/torch/python \
      --seeds 1 2 3 --minutes 8

For each seed, back to back on the same cores: jspade with a preset (default: the demo's,
configs/demo_cpu.toml, with --train.seed S and --train.max_minutes M), then the original's own
Pix2PixTrainer on the same training pairs with the same options (batch, TTUR lr, flips; see
scripts/benchmark_original.py --train-on). Then every final generator renders the same held-out synthetic
scenes (scene numbers neither run trains or validates on) with jspade's renderer, and FID is computed with
one Inception against those scenes' photos. jspade is scored with its EMA and its raw weights. The table
gives each run's iterations and FIDs; --json adds the per-run records. Only figures from one invocation
are comparable: both implementations share the machine in the same minutes.
"""
import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from jspade import cli

HERE = Path(__file__).resolve().parent
TEST_SCENES_START = 2_000_000  # training scenes are 0.., the demo's validation scenes 10^6..


def train_jspade(args, seed, out):
    cmd = [sys.executable, str(HERE / "train.py"), "--config", str(args.config), "--no-progress",
           "--train.seed", str(seed), "--train.max_minutes", str(args.minutes),
           "--train.output_dir", str(out), "--name", f"jspade_seed{seed}"] + shlex.split(args.jspade_args)
    run(cmd, f"jspade seed {seed}")
    run_dir = out / f"jspade_seed{seed}"
    iterations = max(json.loads(line).get("iter", 0) for line in (run_dir / "log.jsonl").read_text().splitlines())
    return run_dir, iterations


def train_original(args, seed, data_root, out, preset):
    m, phase = preset["model"], preset["phases"][0]
    folder = out / f"original_seed{seed}"
    cmd = [args.torch_python, str(HERE / "benchmark_original.py"), str(args.original),
           "--ngf", str(m["ngf"]), "--ndf", str(m["ndf"]), "--crop-size", str(m["crop_size"]),
           "--aspect-ratio", str(m["aspect_ratio"]), "--label-nc", str(m["label_nc"]),
           "--batch-size", str(phase["batch_size"]), "--lr", str(phase["lr"]),
           "--train-on", str(data_root), "--minutes", str(args.minutes), "--seed", str(seed),
           "--save-to", str(folder)]
    done = run(cmd, f"original seed {seed}")
    return folder, json.loads(done.stdout.strip().splitlines()[-1])["iterations"]


def run(cmd, what):
    """Run a training child; a jspade one imports the package of the checkout this script is in (an
    editable install would otherwise give every checkout's script the installed one's code)."""
    print(f"training {what} ...", file=sys.stderr, flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ChildProcessError(f"{what} failed (exit {done.returncode}): {tail[0]}")
    return done


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--original", type=cli.existing_path("folder"), required=True, metavar="SPADE_REPO",
                    help="a checkout of github.com/NVlabs/SPADE")
    ap.add_argument("--torch-python", required=True, metavar="PYTHON", help="a Python with torch (and pillow)")
    ap.add_argument("--config", type=cli.existing_path("file"), default=Path("configs/demo_cpu.toml"),
                    help="the jspade preset (default: %(default)s); its first phase sets the original's batch and lr")
    ap.add_argument("--seeds", type=cli.int_at_least(0), nargs="+", default=[1, 2, 3], help="one pair of runs each")
    ap.add_argument("--minutes", type=cli.float_within(0, low_open=True), default=8.0,
                    help="wall-clock training minutes of every run (default: %(default)s)")
    ap.add_argument("--test-scenes", type=cli.int_at_least(2), default=300,
                    help="held-out synthetic scenes rendered for FID (default: %(default)s)")
    ap.add_argument("--out", type=cli.output_folder, default=Path("results/compare_training"),
                    help="runs, renders and the result table go here (default: %(default)s)")
    ap.add_argument("--jspade-args", default="", metavar="ARGS",
                    help="more train.py flags for the jspade runs, e.g. '--train.reuse_fake true' (an option to measure)")
    ap.add_argument("--skip-original", action="store_true",
                    help="train and score jspade only (e.g. an option against an earlier table on the same scenes)")
    ap.add_argument("--json", action="store_true", help="also print the per-run records as JSON")
    args = ap.parse_args(argv)

    from jspade.data.synthetic import write_synthetic_dataset
    from jspade.inference import render_folder
    from jspade.metrics.fid import InceptionFeatureExtractor, fid

    preset = tomllib.loads(args.config.read_text())
    if preset["data"].get("dataset") != "synthetic":
        ap.error(f"{args.config} does not train on synthetic data; the comparison needs a synthetic preset")
    m = preset["model"]
    size = (m["crop_size"], round(m["crop_size"] / m["aspect_ratio"]))
    args.out.mkdir(parents=True, exist_ok=True)
    test = args.out / "test_scenes"
    if not (test / "labels").is_dir():
        write_synthetic_dataset(test, args.test_scenes, size=size, seed=preset["data"].get("synthetic_seed", 0),
                                start=TEST_SCENES_START)

    extractor = InceptionFeatureExtractor()  # loaded once for every FID below
    records = []
    for seed in args.seeds:
        run_dir, jspade_iters = train_jspade(args, seed, args.out)
        data_root = Path(tomllib.loads((run_dir / "config.toml").read_text())["data"]["root"])
        runs = [("jspade_ema", run_dir, True), ("jspade_raw", run_dir, False)]
        record = {"seed": seed, "jspade_iterations": jspade_iters, "original_iterations": None, "fid_original": None}
        if not args.skip_original:
            original_dir, record["original_iterations"] = train_original(args, seed, data_root, args.out, preset)
            runs.append(("original", original_dir, False))
        for name, checkpoint, ema in runs:
            rendered = args.out / "renders" / f"{name}_seed{seed}"
            render_folder(test / "labels", checkpoint, rendered, size=size, use_ema=ema, overwrite=True,
                          report=lambda *a, **k: None)
            score = fid(rendered, test / "imgs", extractor, real_cache=args.out / "test_stats.npz")
            record[f"fid_{name}"] = round(score, 2)
        records.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)

    print(f"{args.minutes:g} minutes each, FID on {args.test_scenes} held-out scenes"
          + (f"; jspade with {args.jspade_args}" if args.jspade_args else ""))
    print("seed | jspade iterations | original iterations | FID jspade EMA | FID jspade raw | FID original")
    for r in records:
        print(" | ".join("-" if r[k] is None else str(r[k]) for k in (
            "seed", "jspade_iterations", "original_iterations", "fid_jspade_ema", "fid_jspade_raw", "fid_original")))
    (args.out / "results.json").write_text(json.dumps(records, indent=1))
    if args.json:
        print(json.dumps(records))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
