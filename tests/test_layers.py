"""The layer contract: a module under jspade/ imports only from its own layer or a lower one, so the
code reads bottom-up (utilities -> models -> data -> metrics -> train, inference -> applications;
scripts/ sit on top). And `import jspade` imports no Jittor: `jspade.runtime` sets Jittor up, and
every module that imports Jittor reaches it through that module first."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jspade"

# Lowest first. A module belongs to the layer of the longest name here that is it or a package above it
# ("jspade" names only jspade/__init__.py, so a new top-level module must be placed).
LAYERS = [
    ("utilities", ["jspade", "jspade.errors", "jspade.atomic", "jspade.safe_load", "jspade.config",
                   "jspade.runtime", "jspade.cli", "jspade.checkpoint"]),
    # CLIP is a network like the others (with its tokenizer, weights and feature cache); the style
    # bank holds CLIP embeddings that a model carries.
    ("models", ["jspade.models", "jspade.clip", "jspade.style_bank"]),
    # Making a data folder's CLIP feature cache reads the data with the CLIP model.
    ("data", ["jspade.data", "jspade.histogram_match", "jspade.clip.cache_update"]),
    ("metrics", ["jspade.metrics"]),
    ("train, inference", ["jspade.train", "jspade.inference", "jspade.seed_selection", "jspade.report"]),
    ("applications", ["jspade.curation", "jspade.painter", "jspade.parity", "jspade.clip.parity"]),
]


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module):
    """Index into LAYERS of `module` (a dotted name under jspade), or None when no entry covers it."""
    best = None
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            covers = module == name or (name != "jspade" and module.startswith(name + "."))
            if covers and (best is None or len(name) > len(best[1])):
                best = (index, name)
    return None if best is None else best[0]


def is_module(name):
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def jspade_imports(path):
    """(line, module) for every import of a jspade module in `path`, at any depth (a function's lazy
    import counts too). `from jspade.x import y` names jspade.x.y when y is a module, else jspade.x."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base for alias in node.names]
        else:
            continue
        for name in names:
            if name == "jspade" or name.startswith("jspade."):
                yield node.lineno, name


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_placed_in_a_layer():
    unplaced = [str(p.relative_to(ROOT)) for p in modules() if layer_of(module_name(p)) is None]
    assert not unplaced, f"add these to LAYERS in tests/test_layers.py: {unplaced}"


def test_modules_import_only_their_own_layer_or_below():
    upward = []
    for path in modules():
        own = layer_of(module_name(path))
        for line, target in jspade_imports(path):
            other = layer_of(target)
            if own is not None and other is not None and other > own:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {module_name(path)} ({LAYERS[own][0]}) imports "
                              f"{target} ({LAYERS[other][0]}), a higher layer")
    assert not upward, "upward imports, the first at\n" + "\n".join(upward)


def test_jittor_is_imported_only_after_jspade_runtime():
    """Module-level `import jittor` only below an import of jspade.runtime in the module or in a
    package __init__ above it (runtime hides nvcc on a machine without a GPU, before Jittor loads)."""
    def imports_runtime_before(path, line):
        return any(target == "jspade.runtime" and at < line for at, target in jspade_imports(path))

    early = []
    for path in modules():
        if path == PACKAGE / "runtime.py":
            continue
        for node in ast.parse(path.read_text()).body:  # top level only: a function's import runs later
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if not any(n == "jittor" or n.startswith("jittor.") for n in names):
                continue
            inits = [p / "__init__.py" for p in path.parents if PACKAGE in (p, *p.parents)]
            if not (imports_runtime_before(path, node.lineno)
                    or any(imports_runtime_before(init, float("inf")) for init in inits if init != path)):
                early.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not early, f"Jittor imported before jspade.runtime at {early}"


def test_import_jspade_and_its_utilities_import_no_jittor():
    code = ("import sys, jspade, jspade.cli, jspade.config, jspade.errors, jspade.safe_load, jspade.atomic; "
            "assert 'jittor' not in sys.modules, 'jittor imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
