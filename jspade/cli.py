"""One way for the scripts in scripts/ to parse arguments and run.

    from jspade import cli

    def main(argv=None):
        ap = cli.ArgumentParser(description=__doc__)
        ap.add_argument("--batch-size", type=cli.int_at_least(1), default=4)
        args = ap.parse_args(argv)
        ...

    if __name__ == "__main__":
        sys.exit(cli.run(main))

- A bad argument is one line on stderr (`infer.py: error: argument --batch-size: must be at least 1,
  got 0 (see --help)`) and exit status 2, raised while parsing, so before anything is created.
- An expected error while running (a bad checkpoint, data file, run folder, an unreadable file: see
  `expected_errors`) is one line per problem naming the file and the reason, exit status 1. Anything
  else is a bug and keeps its traceback. `--debug` shows the traceback of every error.
- Jittor's own log lines (memory, compiler paths, kernel compilation) are silenced by
  `jspade.runtime` before Jittor is imported; `--verbose` keeps them.
"""
import argparse
import json
import math
import os
import pickle
import sys
import tomllib
from pathlib import Path

from jspade.errors import JspadeError

# Besides JspadeError (every project error class derives from it), what file readers and loaders
# raise for unreadable, truncated or malformed input. ValueError is not among them: a plain
# ValueError is a bug and keeps its traceback.
GENERAL_ERRORS = (OSError, EOFError, pickle.UnpicklingError, json.JSONDecodeError, tomllib.TOMLDecodeError,
                  UnicodeDecodeError)

_debug = "--debug" in sys.argv[1:]


def expected_errors():
    """The exception classes reported as one line (the rest keep their traceback)."""
    return (JspadeError,) + GENERAL_ERRORS


def describe(error):
    """Lines (at least one) saying what went wrong, naming the file where the error knows it."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        where = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 else "")
        return [f"{where}: {error.strerror}"]
    text = str(error).strip() or type(error).__name__
    if isinstance(error, (EOFError, pickle.UnpicklingError)):
        text = f"unreadable pickle data ({type(error).__name__}: {text})"
    path = getattr(error, "path", None)
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if path and str(path) not in text:
        lines[0] = f"{path}: {lines[0]}"
    return lines


def report(prog, error):
    lines = describe(error)
    print(f"{prog}: error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:  # one line per further problem the error lists
        print(f"  {line}", file=sys.stderr)


def run(main, argv=None):
    """Call `main(argv)` and return its exit status, reporting expected errors as one line each.
    Exit status: main's return value (None -> 0), 1 for an expected error, 2 for a bad argument
    (from ArgumentParser), 130 on Ctrl-C."""
    prog = Path(sys.argv[0]).name
    try:
        status = main(argv)
    except KeyboardInterrupt:
        if _debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - sorted into expected / bug below
        if _debug or not isinstance(error, expected_errors()):
            raise
        report(prog, error)
        return 1
    return 0 if status is None else status


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error, and the shared --verbose/--debug flags."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        group = self.add_argument_group("diagnostics")
        group.add_argument("--verbose", action="store_true",
                           help="show Jittor's own log lines (memory, compiler, kernel compilation)")
        group.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    def parse_args(self, args=None, namespace=None):
        global _debug
        parsed = super().parse_args(args, namespace)
        _debug = _debug or parsed.debug
        if parsed.verbose:
            show_jittor_log()
        return parsed

    def error(self, message):
        """One line instead of argparse's usage block (--help has that)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def show_jittor_log():
    """Turn Jittor's info/warning lines back on (for lines logged after this call)."""
    os.environ["log_silent"] = "0"
    if "jittor" in sys.modules:
        import jittor
        from jittor_utils import LOG

        jittor.flags.log_silent = 0
        LOG.log_silent = 0


# --- argparse types: validated values, with the limit in the message ---
def _bounded(convert, what, low, high, low_open):
    """An argparse type: `convert(text)`, finite, in [low, high] ((low, high] when low_open); None
    leaves a side unbounded. The message names the limit that was crossed."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'above' if low_open else 'at least'} {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {text}")
        return value

    parse.__name__ = what.split()[-1]  # argparse's "invalid <name> value" wording
    return parse


def int_at_least(minimum, maximum=None):
    """An integer in [minimum, maximum] (no upper bound when maximum is None)."""
    return _bounded(int, "an integer", minimum, maximum, low_open=False)


def float_within(low=None, high=None, low_open=False):
    """A finite float in [low, high] ((low, high] when low_open); None leaves a side unbounded."""
    return _bounded(float, "a number", low, high, low_open)


def add_reference_photo_options(parser, folder_flag, purpose):
    """The two ways to give each label its reference photo, as infer.py and evaluate.py both take them:
    a folder of photos named like the labels (`folder_flag`), or the 2023 track's label_to_img.json
    with --style-root. `purpose` ends each help text (what the photos are used for)."""
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(folder_flag, type=existing_path("folder"), metavar="DIR",
                        help=f"reference photos named like the labels (<stem>.jpg); {purpose}")
    choice.add_argument("--label-to-img", type=existing_path("file"), metavar="JSON",
                        help="the 2023 track's label_to_img.json, {label file: reference image file}, "
                             f"with --style-root; {purpose}")
    parser.add_argument("--style-root", type=existing_path("folder"), metavar="DIR",
                        help="folder the --label-to-img image names are relative to")


def output_folder(text):
    """A folder to write into: refused when the path exists and is not a folder."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} exists and is not a folder")
    return path


def output_file(text):
    """A file to write: refused when the path is an existing folder or its parent is not a folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {path}: {parent} is a file, not a folder")
    return path


def existing_path(kind="file or folder"):
    """An input path that must exist: 'file', 'folder' or 'file or folder'."""

    def parse(text):
        path = Path(text)
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{path} does not exist")
        if kind == "file" and not path.is_file():
            raise argparse.ArgumentTypeError(f"{path} is not a file")
        if kind == "folder" and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{path} is not a folder")
        return path

    parse.__name__ = kind
    return parse


def model_option(text):
    """'KEY=VALUE' for a model option (a ModelConfig field) -> (key, value of the field's type)."""
    from jspade.config import parse_model_option

    key, sep, value = (part.strip() for part in text.partition("="))
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. ngf=64), got {text!r}")
    try:
        return key, parse_model_option(key, value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
