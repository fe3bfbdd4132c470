"""Every script, run as a user runs it, answers a bad argument or an expected error with one line on
stderr (naming the argument or file and the reason), no traceback, a non-zero exit status, and, for
a bad argument, nothing created. Jittor's own log lines appear only with --verbose."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name, args, cwd):
    # Without the parent's log_silent (set when the test process imported Jittor), so that the
    # child's own default is what is tested.
    env = {k: v for k, v in os.environ.items() if k != "log_silent"}
    return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


@pytest.fixture
def workdir(tmp_path):
    """A folder with one valid label, a file where a folder is expected, a garbage checkpoint."""
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.ones((24, 32), np.uint8)).save(tmp_path / "labels" / "a.png")
    (tmp_path / "afile.txt").write_text("not a folder")
    whole = pickle.dumps({"format": "jspade-checkpoint-1", "networks": {"G": {"w": np.zeros(64, np.float32)}}})
    (tmp_path / "garbage.pkl").write_bytes(whole[:len(whole) // 2])  # a checkpoint cut short
    (tmp_path / "bad_phase.toml").write_text("[[phases]]\nepochs = 1\nbogus = 2\n")
    (tmp_path / "bad_batch.toml").write_text("[[phases]]\nepochs = 1\nbatch_size = -3\n")
    (tmp_path / "bad_type.toml").write_text('[model]\nngf = "sixteen"\n')
    return tmp_path


# (script, arguments, words the one line must hold)
BAD_ARGUMENTS = [
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out", "--batch-size", "0"],
     ["--batch-size", "at least 1", "0"]),
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out", "--size", "100000x100000"],
     ["4096x4096", "--allow-large-size"]),
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out", "--model-option", "ngf=abc"],
     ["ngf", "integer", "abc"]),
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out", "--model-option", "nfg=3"],
     ["unknown model option", "nfg"]),
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "afile.txt"],
     ["--out", "afile.txt", "not a folder"]),
    ("infer.py", ["--labels", "missing", "--checkpoint", "garbage.pkl", "--out", "out"],
     ["--labels", "missing", "does not exist"]),
    ("train.py", ["--model.ngf", "abc", "--train.output_dir", "results"], ["--model.ngf", "abc"]),
    ("train.py", ["--data", "missing", "--train.output_dir", "results"], ["--data", "missing", "does not exist"]),
    ("train.py", ["--phases", "10:x:0.1", "--train.output_dir", "results"], ["10:x:0.1", "EPOCHS:BATCH:LR"]),
    ("train.py", ["--phases", "10:0:0.1", "--train.output_dir", "results"], ["10:0:0.1", "at least 1"]),
    ("evaluate.py", ["--fake", "labels", "--batch-size", "0"], ["--batch-size", "at least 1"]),
    ("evaluate.py", ["--fake", "labels", "--mask-accuracy", "1.5"], ["--mask-accuracy", "at most 1"]),
    ("average_checkpoints.py", ["garbage.pkl", "missing.pkl", "--out", "avg.pkl"], ["missing.pkl", "does not exist"]),
    ("clean_dataset.py", ["--data", "labels", "--out", "cur", "--near-dup-keep", "x"], ["--near-dup-keep", "integer"]),
    ("validate_data.py", ["--data", "missing"], ["--data", "does not exist"]),
    ("train_segmenter.py", ["--data", "labels", "--epochs", "0", "--out", "seg.pkl"], ["--epochs", "at least 1"]),
    ("make_synthetic.py", ["--out", "synth", "--n", "0"], ["--n", "at least 1"]),
    ("make_synthetic.py", ["--out", "synth", "--size", "100000x100000"], ["--size", "at most 4096x4096"]),
    ("paint.py", ["--port", "70000"], ["--port", "at most 65535"]),
    ("benchmark.py", ["--batch-size", "0"], ["--batch-size", "at least 1"]),
    ("benchmark.py", ["--min-seconds", "-1"], ["--min-seconds", "at least 0"]),
    ("compare_training.py", ["--original", "labels", "--torch-python", "python", "--minutes", "0"],
     ["--minutes", "above 0"]),
    ("check_parity.py", ["missing.npz"], ["missing.npz", "does not exist"]),
    # a CLIP model's style (issue 23): what is wrong without looking at the checkpoint
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out", "--clip-style", "-1"],
     ["--clip-style", "at least 0", "-1"]),
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out", "--clip-style", "1",
                  "--clip-text", "a lake"], ["--clip-text", "not allowed with", "--clip-style"]),
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out", "--clip-text", "a lake"],
     ["--clip-text", "needs --clip-weights"]),
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out", "--clip-reference",
                  "missing.jpg", "--clip-weights", "random"], ["--clip-reference", "missing.jpg", "does not exist"]),
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out", "--clip-weights", "random"],
     ["--clip-weights", "only with --clip-reference or --clip-text"]),
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out", "--clip-text", "a lake",
                  "--clip-weights", "nope.pt"], ["--clip-weights", "nope.pt", "does not exist"]),
    ("evaluate.py", ["--fake", "labels", "--clip-reference", "missing.jpg"], ["--clip-reference", "missing.jpg"]),
    ("clip_features.py", ["--data", "labels", "--clip-weights", "random", "--batch-size", "0"],
     ["--batch-size", "at least 1"]),
    ("clip_features.py", ["--data", "labels", "--clip-weights", "random:x"], ["--clip-weights", "random:SEED"]),
    ("paint.py", ["--clip-weights", "nope.pt"], ["--clip-weights", "nope.pt", "does not exist"]),
    # configuration: every source checked by one set of rules, before a run folder exists (issue 20)
    ("train.py", ["--train.max_iters", "-5", "--train.output_dir", "results"], ["--train.max_iters", "at least 0"]),
    ("train.py", ["--train.max_minutes", "nan", "--train.output_dir", "results"], ["--train.max_minutes", "finite"]),
    ("train.py", ["--train.save_every", "-1", "--train.output_dir", "results"], ["--train.save_every", "at least 0"]),
    ("train.py", ["--model.ngf", "0", "--train.output_dir", "results"], ["--model.ngf", "at least 1"]),
    ("train.py", ["--model.aspect_ratio", "0", "--train.output_dir", "results"], ["--model.aspect_ratio", "above 0"]),
    ("train.py", ["--config", "bad_phase.toml", "--train.output_dir", "results"],
     ["bad_phase.toml", "[[phases]] #1", "unknown option bogus"]),
    ("train.py", ["--config", "bad_batch.toml", "--train.output_dir", "results"],
     ["bad_batch.toml", "batch_size", "at least 1", "-3"]),
    ("train.py", ["--config", "bad_type.toml", "--train.output_dir", "results"],
     ["bad_type.toml", "[model] ngf", "integer", "sixteen"]),
    ("train.py", ["--model.netG", "tsit", "--model.clip_dim", "8", "--train.output_dir", "results"],
     ["clip_dim 8", "netG 'spade'"]),
    ("train.py", ["--name", "x", "--resume", "--overwrite", "--train.output_dir", "results"],
     ["--resume and --overwrite"]),
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out", "--size", "100000x100000",
                  "--allow-large-size"], ["100000x100000", "65500"]),
    ("infer.py", ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out", "--size", "60000x60000",
                  "--allow-large-size", "--batch-size", "64"], ["60000x60000", "GiB", "available"]),
]


@pytest.mark.parametrize("script, args, words", BAD_ARGUMENTS, ids=[f"{s}-{w[0]}" for s, _, w in BAD_ARGUMENTS])
def test_bad_argument_is_one_line_and_creates_nothing(workdir, script, args, words):
    before = tree(workdir)
    proc = run_script(script, args, workdir)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"{script}: error: ")
    for word in words:
        assert word in lines[0], lines[0]
    assert tree(workdir) == before


def test_unreadable_checkpoint_is_one_line_and_debug_shows_the_traceback(workdir):
    args = ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out"]
    proc = run_script("infer.py", args, workdir)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("infer.py: error: "), proc.stderr
    assert not (workdir / "out").exists()
    debug = run_script("infer.py", args + ["--debug"], workdir)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_run_folder_error_is_one_line(workdir):
    proc = run_script("train.py", ["--name", "nope", "--resume", "--train.output_dir", "results"], workdir)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"train.py: error: nothing to resume: {Path('results') / 'nope'} does not exist or is empty"]
    assert not (workdir / "results").exists()


def test_painter_without_a_checkpoint_says_to_train_first(workdir):
    proc = run_script("paint.py", ["--results", workdir / "results"], workdir)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "bash run.sh train" in lines[0], proc.stderr


def test_jittor_log_lines_only_with_verbose(workdir):
    args = ["--labels", "labels", "--checkpoint", "garbage.pkl", "--out", "out"]  # imports Jittor, then fails
    quiet = run_script("infer.py", args, workdir)
    assert "[i " not in quiet.stdout + quiet.stderr and "Total mem" not in quiet.stdout + quiet.stderr
    assert quiet.returncode == 1 and len(quiet.stderr.strip().splitlines()) == 1, quiet.stderr
    verbose = run_script("infer.py", args + ["--verbose"], workdir)
    assert verbose.returncode == 1 and "[i " in verbose.stderr + verbose.stdout


def test_scripts_that_need_no_jittor_do_not_import_it(workdir):
    """make_synthetic.py is numpy and PIL only: even --verbose shows no Jittor line (`import jspade`
    does not import Jittor)."""
    args = ["--preview", "p.png", "--preview-n", "1", "--size", "32x32", "--verbose"]
    proc = run_script("make_synthetic.py", args, workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == ["preview of 1 scenes: p.png"] and "[i " not in proc.stderr


def test_argument_types_report_the_limit():
    import argparse

    from jspade import cli

    assert cli.int_at_least(1)("3") == 3
    assert cli.float_within(0, 1)("0.5") == 0.5
    assert cli.model_option("use_vae=false") == ("use_vae", False)
    assert cli.model_option("aspect_ratio = 1.5") == ("aspect_ratio", 1.5)
    for parse, text, words in [(cli.int_at_least(1, 10), "11", "at most 10"), (cli.int_at_least(1), "1.5", "integer"),
                               (cli.float_within(0, low_open=True), "0", "above 0"),
                               (cli.float_within(0), "nan", "finite"), (cli.model_option, "ngf", "KEY=VALUE"),
                               (cli.model_option, "use_vae=maybe", "true or false")]:
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            parse(text)


def test_run_reports_expected_errors_and_keeps_bugs_loud(capsys):
    from jspade import cli
    from jspade.data.readers import DataError

    def missing_file(argv):
        open("/nonexistent/x.png")

    def bad_data(argv):
        raise DataError("class id 41 out of range 0..28", "labels/a.png")

    def bad_pickle(argv):
        pickle.loads(pickle.dumps(list(range(100)))[:40])

    assert cli.run(missing_file) == 1
    assert capsys.readouterr().err.endswith("error: /nonexistent/x.png: No such file or directory\n")
    assert cli.run(bad_data) == 1
    assert capsys.readouterr().err.endswith("error: labels/a.png: class id 41 out of range 0..28\n")
    assert cli.run(bad_pickle) == 1
    assert "unreadable pickle data" in capsys.readouterr().err
    assert cli.run(lambda argv: 3) == 3 and cli.run(lambda argv: None) == 0
    with pytest.raises(KeyError):  # a bug keeps its traceback
        cli.run(lambda argv: {}["x"])
    with pytest.raises(ValueError):  # a ValueError too: user errors are JspadeErrors
        cli.run(lambda argv: int("x"))


# A script as scripts/ writes them: an internal ValueError (a bug) and a user error (JspadeError).
TOOL = """
import sys
from jspade import cli
from jspade.errors import UnsupportedRequest

def main(argv):
    if sys.argv[1] == "bug":
        int("not a number")
    raise UnsupportedRequest("style centre 20 is out of range: the bank has centres 0..15")

sys.exit(cli.run(main))
"""


def test_a_value_error_bug_keeps_its_traceback_and_a_user_error_is_one_line(tmp_path):
    (tmp_path / "tool.py").write_text(TOOL)
    run = lambda what: subprocess.run([sys.executable, "tool.py", what], cwd=tmp_path,  # noqa: E731
                                      capture_output=True, text=True, timeout=60)
    bug = run("bug")
    assert bug.returncode == 1 and "Traceback" in bug.stderr, bug.stderr
    assert "ValueError: invalid literal for int()" in bug.stderr
    user = run("user")
    assert user.returncode == 1, user.stderr
    assert user.stderr.splitlines() == ["tool.py: error: style centre 20 is out of range: the bank has centres 0..15"]


def test_a_second_trainer_on_a_locked_run_folder_is_refused(workdir):
    """The holder here is this test process (flock is per open file): train.py must name its PID."""
    import fcntl

    from jspade.train import run_folder

    run_dir = workdir / "results" / "busy"
    run_dir.mkdir(parents=True)
    (run_dir / ".jspade-run").touch()
    held = run_folder.lock_run_folder(run_dir)
    try:
        before = tree(workdir)
        proc = run_script("train.py", ["--name", "busy", "--resume", "--train.output_dir", "results"], workdir)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert f"PID {os.getpid()}" in lines[0] and "in use" in lines[0]
        assert tree(workdir) == before
    finally:
        held.close()
    assert fcntl  # (the lock is an OS file lock: released with the file)


def test_clean_dataset_data_errors_are_exit_1_and_leave_no_empty_out(workdir):
    data = workdir / "data"
    (data / "labels").mkdir(parents=True)
    (data / "imgs").mkdir()
    Image.fromarray(np.ones((24, 32), np.uint8)).save(data / "labels" / "a.png")
    Image.fromarray(np.ones((24, 32, 3), np.uint8)).save(data / "imgs" / "a.jpg")
    os.symlink("loop2.png", data / "labels" / "loop1.png")
    os.symlink("loop1.png", data / "labels" / "loop2.png")
    proc = run_script("clean_dataset.py", ["--data", data, "--out", "cur", "--no-progress"], workdir)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "symbolic link loop" in lines[0], proc.stderr
    assert "labels/loop" in lines[0] and not (workdir / "cur").exists()
    for name in ("loop1.png", "loop2.png"):
        (data / "labels" / name).unlink()
    (data / "imgs" / "b\udcff.jpg").write_bytes((data / "imgs" / "a.jpg").read_bytes())  # a non-UTF-8 name
    proc = run_script("clean_dataset.py", ["--data", data, "--out", "cur", "--no-progress"], workdir)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "not valid UTF-8" in lines[0], proc.stderr
    assert not (workdir / "cur").exists()
