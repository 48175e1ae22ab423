"""Imports point one way: the front end (command line, Python API, the job) over the core (engines,
data, training, the run folder) over nothing of either; `converters` over the core only."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prge_gguf"
# The layer that parses, resolves inputs and runs jobs; it alone calls `converters` (exports,
# the end-of-run PEFT copy, a PEFT folder read as input), and only inside functions.
FRONT_END = {"prge_gguf", "prge_gguf.__main__", "prge_gguf.cli", "prge_gguf.api", "prge_gguf.job",
             "prge_gguf.inputs"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import in the file at `path`."""
    tree = ast.parse(path.read_text(), str(path))
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) not in nested) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, id(node) not in nested))
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_front_end_calls_converters_and_lazily(name):
    uses = [(m, top) for m, top in _imports(MODULES[name]) if _within(m, "converters")]
    if name in FRONT_END:
        assert not [m for m, top in uses if top], f"{name} imports converters at load time"
    else:
        assert not uses, f"{name} is core and imports {uses[0][0]}: converters build on the core"


DATA = ("prge_gguf.data", "prge_gguf.lm_data", "prge_gguf.tasks")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_engines_and_data_meet_only_in_scoring(name):
    imported = {m for m, _ in _imports(MODULES[name])}
    if _within(name, "prge_gguf.engine"):
        assert not [m for m in imported if any(_within(m, d) for d in DATA)], f"{name} imports data"
    if any(_within(name, d) for d in DATA):
        assert not [m for m in imported if _within(m, "prge_gguf.engine")], f"{name} imports an engine"
    if name == "prge_gguf.scoring":
        assert not [m for m in imported if m.startswith("prge_gguf")], "scoring sits beneath both"


# What training and evaluation load, and `--help` or `info` must not. `--help` loads no numerics
# at all; `info` reads a GGUF header with the gguf package, which needs numpy.
TRAINING_MACHINERY = ("llama_cpp", "torch", "transformers", "jinja2", "tqdm")
NUMERICS = ("numpy", "gguf", "prge_gguf.lora", "prge_gguf.optim", "prge_gguf.prge",
            "prge_gguf.estimators.base")


@pytest.mark.parametrize(("argv", "absent"), [(["--help"], TRAINING_MACHINERY + NUMERICS),
                                              (["train", "--help"], TRAINING_MACHINERY + NUMERICS),
                                              (["info"], TRAINING_MACHINERY)])
def test_start_up_loads_no_training_machinery(argv, absent):
    import subprocess
    import sys

    code = (f"import sys\nfrom prge_gguf.cli import main\ntry:\n    main({argv!r})\n"
            "except SystemExit:\n    pass\n"
            f"print(sorted(m for m in {absent!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    assert out.splitlines()[-1] == "[]"
