"""README.md's commands parse with the real argument parser, its two set-up commands are the
ones CI runs, and every relative link in README.md and docs/ names a file that exists.

No model runs: argparse only (fast). A command that fails to parse exits argparse with
SystemExit, which the test reports with the command.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from prge_gguf.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

COMMAND_1 = ('python3 -m venv .venv && CMAKE_ARGS="-DLLAVA_BUILD=OFF" .venv/bin/pip install . '
             '&& .venv/bin/prge-gguf train --task sst2 --out runs/sst2')
COMMAND_2 = ('python3 -m venv .venv && CMAKE_ARGS="-DLLAVA_BUILD=OFF" .venv/bin/pip install -q '
             "'.[test]' && .venv/bin/python -m pytest -q")


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"^[ \t]*```bash\n(.*?)^[ \t]*```", text, flags=re.S | re.M)


def _logical_lines(block: str) -> list[str]:
    """The block's lines with backslash continuations joined."""
    return [line.strip() for line in re.sub(r"\\\n", " ", block).splitlines() if line.strip()]


def _prge_commands(text: str) -> list[list[str]]:
    """The argument lists of every prge-gguf command in the README's bash blocks: `prge-gguf ...`
    and `.venv/bin/prge-gguf ...` (also after `&&`), and `torchrun ... -m prge_gguf ...`."""
    commands = []
    for block in _bash_blocks(text):
        for line in _logical_lines(block):
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                for i, word in enumerate(words):
                    if word.endswith("prge-gguf") or (word == "prge_gguf" and words[i - 1] == "-m"):
                        commands.append(words[i + 1:])
                        break
    return commands


COMMANDS = _prge_commands(README.read_text(encoding="utf-8"))


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
