"""README.md's commands work as written. Every shell command in its bash blocks (and every inline
`prge-gguf ...`) is read from the README text, not copied here: each prge-gguf command parses with
the real argument parser; the slow tests run them, in README order in one folder, at small step
counts, and run its Python blocks; the commands that need the network, a GPU or another program
are checked as parsed only (PARSE_ONLY says which and why). Its two set-up commands are the ones
CI runs, and every relative link in README.md and docs/ names a file that exists. The commands
run on the real default model, as a user's do.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
from pathlib import Path

import pytest

from prge_gguf.cli import build_parser

pytestmark = pytest.mark.default_model

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

COMMAND_1 = ('python3 -m venv .venv && CMAKE_ARGS="-DLLAVA_BUILD=OFF" .venv/bin/pip install . '
             '&& .venv/bin/prge-gguf train --task sst2 --out runs/sst2')
COMMAND_2 = ('python3 -m venv .venv && CMAKE_ARGS="-DLLAVA_BUILD=OFF" .venv/bin/pip install -q '
             "'.[test]' && .venv/bin/python -m pytest -q")


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"^[ \t]*```bash\n(.*?)^[ \t]*```", text, flags=re.S | re.M)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^[ \t]*```python\n(.*?)^[ \t]*```", text, flags=re.S | re.M)


def _logical_lines(block: str) -> list[str]:
    """The block's lines with backslash continuations joined."""
    return [line.strip() for line in re.sub(r"\\\n", " ", block).splitlines() if line.strip()]


def _shell_commands(text: str) -> list[list[str]]:
    """The words of every shell command in the README, in its order: each `&&` part of each line of
    its bash blocks (comments dropped), and each inline `prge-gguf ...` of its prose."""
    commands = []
    for block in re.split(r"(^[ \t]*```.*?^[ \t]*```)", text, flags=re.S | re.M):
        if block.lstrip().startswith("```bash"):
            for line in _logical_lines(block.split("\n", 1)[1].rsplit("```", 1)[0]):
                commands += [shlex.split(part, comments=True) for part in line.split("&&")]
        elif not block.lstrip().startswith("```"):
            commands += [shlex.split(span) for span in re.findall(r"`(prge-gguf [^`]+)`", block)]
    return [words for words in commands if words]


def _prge_args(words: list[str]) -> list[str] | None:
    """The arguments of a prge-gguf command: `prge-gguf ...`, `.venv/bin/prge-gguf ...` or
    `torchrun ... -m prge_gguf ...`; None for another program's command."""
    for i, word in enumerate(words):
        if word.endswith("prge-gguf") or (word == "prge_gguf" and words[i - 1] == "-m"):
            return words[i + 1:]
    return None


SHELL = _shell_commands(README.read_text(encoding="utf-8"))
COMMANDS = [args for args in map(_prge_args, SHELL) if args is not None]


def test_the_readme_has_commands_to_check():
    subcommands = {args[0] for args in COMMANDS}
    assert {"info", "train", "eval", "generate", "export", "plot"} <= subcommands, subcommands
    assert {a[a.index("--to") + 1] for a in COMMANDS if "--to" in a} == {"peft", "gguf", "merged", "ollama"}


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_readme_command_parses(args):
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"prge-gguf {shlex.join(args)} does not parse (exit {exc.code})")


def test_setup_commands_are_verbatim_and_ci_runs_command_2():
    blocks = [_logical_lines(b) for b in _bash_blocks(README.read_text(encoding="utf-8"))]
    assert blocks[0] == [COMMAND_1], "README's command 1 changed"
    assert blocks[1] == [COMMAND_2], "README's command 2 changed"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ".venv/bin/pip install -q '.[test]' && .venv/bin/python -m pytest -q" in ci
    assert COMMAND_2 in ci


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    heads = re.findall(r"^#+ (.*)$", page.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_relative_links_in_readme_and_docs_exist():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)#\s]+)(?:#([^)]*))?\)", page.read_text(encoding="utf-8")):
            path = page.parent / target
            if "://" in target:
                continue
            if not path.exists():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                missing.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
    assert not missing, missing


# The README commands the tests check as parsed only, by program (for prge-gguf, by a flag), and why.
PARSE_ONLY = {
    "python3": "makes a virtual environment: the tests run in one already",
    "pip": "installs the package: needs the network, and compiles llama.cpp (minutes)",
    "python": "runs this test suite (.ci/run runs it)",
    "llama-cli": "llama.cpp's own program, not installed with the package (tests/test_engine.py loads "
                 "the adapter in llama-cpp-python, the same llama.cpp)",
    "ollama": "Ollama, not installed with the package (tests/test_safety.py checks the Modelfile "
              "against Ollama's syntax)",
    "torchrun": "starts 2 processes with torch (tests/test_distributed.py runs torchrun jobs)",
    "--n-gpu-layers": "needs a GPU and llama.cpp built for it",
}
# The Python paragraphs the tests compile only, by a name in them, and why.
PARSE_ONLY_PYTHON = {
    "base_model": "needs the user's transformers model `base_model` and torch (tests/test_peft.py loads "
                  "the PEFT export with PeftModel.from_pretrained)",
}
# What changes so that a command runs in seconds (see _small).
SMALL_TRAIN = {"steps": 1, "batch_size": 2}
EXTEND_TO = 2  # a README `--resume RUN --steps N` extends the small run to this many steps
SMALL_EVAL = {"limit": 4}
# One llama.cpp thread: decodes of a few rows gain little from a second, and on a busy machine
# two threads waiting on each other take several times as long.
THREADS = 1
MAX_TOKENS = 8
SMALL_DEV = "small-dev.tsv"  # 4 rows of the shipped SST-2 dev set: a task's run evaluates on them


def _parse_only(words: list[str]) -> str | None:
    """Why a README command is checked as parsed only; None for one the tests run."""
    args = _prge_args(words)
    if args is not None and words[0].endswith("prge-gguf"):
        return next((PARSE_ONLY[flag] for flag in args if flag in PARSE_ONLY), None)
    program = next(w for w in words if "=" not in w)  # past `VAR=value` prefixes
    return PARSE_ONLY.get(Path(program).name, f"no reason listed for {program}: add it to PARSE_ONLY")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _small(args: list[str]) -> list[str]:
    """A README command's arguments with what must change to run it in seconds: fewer steps (a
    `--steps N` of `--resume` extends the run by a step), a smaller batch, 4 held-out rows for a
    run on a task's data, an eval limit, fewer generated tokens and one thread."""
    args = list(args)
    if args[0] in ("train", "eval", "generate") and "--threads" not in args:
        args += ["--threads", str(THREADS)]
    if args[0] == "train" and "--steps" in args:
        args[args.index("--steps") + 1] = str(EXTEND_TO)
    elif args[0] == "train" and "--resume" not in args:
        args += [x for k, v in SMALL_TRAIN.items() for x in (_flag(k), str(v))]
        if "--data" not in args and "--valid" not in args:
            args += ["--valid", SMALL_DEV]
    elif args[0] == "eval":
        args += [x for k, v in SMALL_EVAL.items() for x in (_flag(k), str(v))]
    elif args[0] == "generate":
        args[args.index("--max-tokens") + 1] = str(MAX_TOKENS)
    return args


RUN = [i for i, words in enumerate(SHELL) if _prge_args(words) is not None and _parse_only(words) is None]


def _write_inputs(folder: Path) -> None:
    """The files the README's commands name and a user brings: data in the formats the README
    describes, the config file of docs/data.md, and the model file beside them."""
    from prge_gguf.models import default_model_path

    def jsonl(path: str, rows: list[dict]) -> None:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text("".join(json.dumps(r) + "\n" for r in rows))

    reviews = [("a joy to watch", "pos"), ("tedious and flat", "neg"), ("superb acting", "pos"),
               ("a dull mess", "neg")] * 2
    jsonl("train.jsonl", [{"text": t, "label": y} for t, y in reviews])
    jsonl("valid.jsonl", [{"text": t, "label": y} for t, y in reviews[:4]])
    jsonl("more.jsonl", [{"text": f"Review: {t}\nSentiment:", "options": ["negative", "positive"],
                          "label": int(y == "pos")} for t, y in reviews])
    chats = [{"messages": [{"role": "user", "content": f"Is '{t}' kind?"},
                           {"role": "assistant", "content": "Yes." if y == "pos" else "No."}]}
             for t, y in reviews]
    jsonl("chats/train.jsonl", chats)
    jsonl("chats/valid.jsonl", chats[:2])
    dev = (ROOT / "prge_gguf" / "tasks" / "data" / "sst2" / "dev.tsv").read_text().splitlines()
    (folder / SMALL_DEV).write_text("\n".join(dev[:5]) + "\n")
    yaml = re.search(r"```yaml\n(.*?)```", (ROOT / "docs" / "data.md").read_text(), flags=re.S)[1]
    # Its out is the README's runs/x, which the commands before it made already.
    (folder / "run.yaml").write_text(yaml.replace("out: runs/x", "out: runs/config"))
    (folder / default_model_path().name).symlink_to(default_model_path())


def _run(args: list[str]) -> tuple[object, str]:
    """(exit code, or the exception, and the output) of `prge-gguf ARGS` run in this process."""
    from prge_gguf.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:  # recorded: the commands after it still run
            code = exc
    return code, out.getvalue()


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory):
    """A folder where every runnable README command ran, in README order: {index: (code, output)}."""
    folder = tmp_path_factory.mktemp("readme")
    _write_inputs(folder)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        results = {i: _run(_small(_prge_args(SHELL[i]))) for i in RUN}
    finally:
        os.chdir(cwd)
    return folder, results


def test_every_readme_command_runs_or_says_why_not():
    unlisted = [_parse_only(w) for w in SHELL if (_parse_only(w) or "").startswith("no reason")]
    assert not unlisted, unlisted
    used = {Path(w).name for words in SHELL for w in words}
    assert not set(PARSE_ONLY) - used, "PARSE_ONLY names what README.md no longer shows"
    assert {_prge_args(SHELL[i])[0] for i in RUN} >= {"info", "train", "eval", "generate", "export", "plot"}


@pytest.mark.slow
@pytest.mark.parametrize("i", RUN, ids=[shlex.join(SHELL[i])[:70] for i in RUN])
def test_readme_command_runs(readme_folder, i):
    folder, results = readme_folder
    args = _small(_prge_args(SHELL[i]))
    code, output = results[i]
    assert code == 0, f"prge-gguf {shlex.join(args)} exited {code!r}:\n{output[-3000:]}"
    if "--out" in args:
        assert (folder / args[args.index("--out") + 1]).exists()
    if args[0] == "eval":
        assert 0 <= json.loads(output.strip().splitlines()[-1])["accuracy"] <= 1
    if args[0] == "generate":
        assert "### completion" in output
    if args[0] == "plot":
        assert (folder / args[1] / "curves.png").is_file()
    if args[0] == "train" and "--resume" in args and "--steps" in args:
        assert json.loads((folder / args[args.index("--resume") + 1] / "config.json").read_text()
                          )["train"]["steps"] == EXTEND_TO


def _small_api(monkeypatch, dev: Path) -> None:
    """`finetune` and `evaluate` with SMALL_TRAIN and SMALL_EVAL over what a README block passes."""
    import prge_gguf

    finetune, evaluate = prge_gguf.finetune, prge_gguf.evaluate

    def small_finetune(*args, **kwargs):
        held_out = {} if kwargs.get("data") or kwargs.get("valid") else {"valid": str(dev)}
        return finetune(*args, **kwargs | SMALL_TRAIN | held_out | {"threads": THREADS})

    monkeypatch.setattr(prge_gguf, "finetune", small_finetune)
    monkeypatch.setattr(prge_gguf, "evaluate",
                        lambda *a, **kw: evaluate(*a, **kw | SMALL_EVAL | {"threads": THREADS}))


@pytest.mark.slow
def test_readme_python_api_block_runs(tmp_path, monkeypatch, capsys):
    api = next(b for b in _python_blocks(README.read_text(encoding="utf-8")) if "finetune(" in b)
    _write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    _small_api(monkeypatch, tmp_path / SMALL_DEV)
    scope: dict = {}
    exec(compile(api, "README.md (Python API)", "exec"), scope)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == len(scope["run"].metrics)  # on_metrics=print printed every logged row
    assert sorted(scope["adapter"].b) == sorted(scope["adapter"].a)


@pytest.mark.slow
def test_readme_python_adapter_block_runs_on_the_commands_run(readme_folder, monkeypatch):
    """The Python paragraphs that use a run's adapter run in the folder of the README's commands;
    those PARSE_ONLY_PYTHON names compile."""
    folder, _ = readme_folder
    monkeypatch.chdir(folder)
    blocks = [b for b in _python_blocks(README.read_text(encoding="utf-8")) if "finetune(" not in b]
    assert blocks
    for block in blocks:
        scope: dict = {}
        for paragraph in block.split("\n\n"):
            code = compile(paragraph, "README.md", "exec")
            if not any(name in paragraph for name in PARSE_ONLY_PYTHON):
                exec(code, scope)
    assert any(name in b for b in blocks for name in PARSE_ONLY_PYTHON), "PARSE_ONLY_PYTHON is stale"
