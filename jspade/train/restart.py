"""Crash survival: run training in a child process and, when the child dies from a signal (a native
crash such as Jittor's intermittent SIGSEGV, or the OOM killer's SIGKILL), start it again from the
run's newest intact checkpoint, up to N times, each restart logged in the run's log.jsonl.

Jittor (imported by `import jspade`) installs a SIGCHLD handler that ends the whole process when a
child dies from a signal ("Caught SIGCHLD. Maybe out of memory"), which would end this parent with
the child: the parent restores the default disposition while it supervises. In the child,
scripts/train.py replaces Jittor's SIGSEGV handler (which calls exit(1) inside the handler, so a
crash may look like an ordinary exit 1, or fault again) by `faulthandler`, which prints every
thread's Python stack and lets the process die from the real signal.

Interrupt, terminate and hang-up signals (Ctrl-C, `kill`, a closed terminal) are a person stopping
the run: they are passed on, never restarted. Not for use under mpirun (restart the whole job there).
"""
import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

CHILD_ENV = "JSPADE_RESTART_CHILD"  # set in the child, so that it trains instead of wrapping again
DELIBERATE = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def has_checkpoint(run_dir):
    return any((Path(run_dir) / "checkpoints").glob("*.pkl"))


def restart_arguments(argv):
    """The child's arguments for a restart: continue the same run (--resume, never --overwrite)."""
    args = [a for a in argv if a not in ("--resume", "--overwrite")]
    return args + ["--resume"]


def log_restart(run_dir, **fields):
    line = {"event": "restart", **fields, "at": datetime.now().isoformat(timespec="seconds")}
    with open(Path(run_dir) / "log.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def run_with_restarts(command, argv, run_dir, max_restarts, env=None, say=None):
    """Run `command + argv` until it exits by itself; after a death by signal rerun it with
    `restart_arguments(argv)` (or, if it died before writing any checkpoint, with --overwrite).
    Returns the exit status for the parent (128 + signal number after a death by signal)."""
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    env = {**(env or {}), CHILD_ENV: "1"}
    args = list(argv)
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        return _supervise(command, argv, args, run_dir, max_restarts, env, say)
    finally:
        if previous is not None:  # None: a handler installed from C (Jittor's), which Python cannot reinstate
            signal.signal(signal.SIGCHLD, previous)


def _supervise(command, argv, args, run_dir, max_restarts, env, say):
    for attempt in range(max_restarts + 1):
        started = time.time()
        code = subprocess.run(command + args, env=env).returncode
        if code >= 0:
            return code
        sig = signal.Signals(-code)
        if sig in DELIBERATE or attempt == max_restarts:
            if sig not in DELIBERATE:
                say(f"training died from {sig.name}; no restarts left (--train.restart_on_crash {max_restarts})")
            return 128 - code
        if has_checkpoint(run_dir):
            args = restart_arguments(argv)
            how = "resuming from its newest intact checkpoint"
        else:
            args = [a for a in argv if a not in ("--resume", "--overwrite")] + ["--overwrite"]
            how = "no checkpoint was written yet: starting over"
        if Path(run_dir).is_dir():
            log_restart(run_dir, attempt=attempt + 1, of=max_restarts, signal=sig.name,
                        after_s=round(time.time() - started, 1))
        say(f"training died from {sig.name}; restart {attempt + 1} of {max_restarts}, {how}")
    return 1
