"""Built-in tasks: a template, label words and the data files shipped in the package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prge_gguf.data import Example, read_records, records_to_examples
from prge_gguf.errors import PrgeError

_DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Task:
    """A classification task: `template` renders a record; `label_words` maps label -> word."""

    name: str
    template: str
    label_words: dict[str, str]
    train_file: Path | None = None
    dev_file: Path | None = None

    def examples(self, path: Path) -> list[Example]:
        return records_to_examples(read_records(path), self.template, self.label_words)


BUILTIN = {
    # MeZO's SST-2 prompt: "{sentence} It was {terrible|great}".
    "sst2": Task(
        "sst2",
        "{text} It was",
        {"0": "terrible", "1": "great"},
        _DATA / "sst2" / "train.tsv",
        _DATA / "sst2" / "dev.tsv",
    ),
}


def builtin_task(name: str) -> Task:
    """The built-in task `name`, or a PrgeError listing the known ones."""
    if name not in BUILTIN:
        raise PrgeError(f"--task: unknown task '{name}' (expected one of: {', '.join(BUILTIN)})")
    return BUILTIN[name]
