"""scripts/compare_training.py trains the checkout it belongs to: comparing two checkouts (before and
after a change) must not train the editable install's code twice."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("compare_training", ROOT / "scripts" / "compare_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_training_child_imports_this_checkouts_package(tmp_path, monkeypatch):
    compare_training = load_script()
    other = tmp_path / "elsewhere"  # a PYTHONPATH the user had stays, after this checkout
    other.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(other))
    monkeypatch.chdir(tmp_path)  # not the checkout: the import must not come from the working directory
    done = compare_training.run([sys.executable, "-c", "import sys, jspade; print(jspade.__file__); "
                                 "print(sys.path.index(%r) > sys.path.index(%r))" % (str(other), str(ROOT))],
                                "probe")
    path, order = done.stdout.split()
    assert Path(path).resolve() == ROOT / "jspade" / "__init__.py"
    assert order == "True"
