"""Built-in tasks: prompt templates and label words, mostly of the zeroth-order literature (MeZO,
P-RGE); sst2's own prompt was chosen on its training data.

Only sst2 and sst2-mezo (the same data) ship their data (for the default job); the SuperGLUE
tasks (rte, cb, copa, wic) read the user's files in the SuperGLUE JSONL layout via --data/--valid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prge_gguf.data import Example, read_records, records_to_examples, tokenize_example
from prge_gguf.errors import PrgeError
from prge_gguf.lm_data import LMExample, lm_format, records_to_lm_examples, tokenize_lm_example
from prge_gguf.scoring import TokenizedExample, Tokenizer

_DATA = Path(__file__).parent / "data"
_NLI = '{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n'


@dataclass(frozen=True)
class Task:
    """A classification task: `template` renders a record; `label_words` maps label -> word.

    `prepare` rewrites each record first (e.g. COPA turns its two choices into options).
    A task with label words, or marked `classify` (a template given), is set up for classification:
    language-modelling records are refused rather than silently trained on.
    """

    name: str
    template: str
    label_words: dict[str, str] | None
    train_file: Path | None = None
    dev_file: Path | None = None
    joiner: str = " "
    prepare: Callable[[dict], dict] | None = None
    classify: bool = False

    def examples(self, path: Path) -> list[Example | LMExample]:
        """Examples of a data file: language-modelling records (text, prompt/completion,
        messages) are detected by their fields, anything else is classification."""
        records = read_records(path)
        if records and self.prepare is None and (kind := lm_format(records[0][1])):
            if self.classify or self.label_words:
                place, rec = records[0]
                why = f"--task {self.name}" if self.name in BUILTIN else "--template/--label-words"
                raise PrgeError(f"{place}: a '{kind}' record with no 'label' (language modelling), but {why} "
                                f"set up classification (record has: {', '.join(rec)}): add 'label' fields, "
                                "or drop those flags to train on the text")
            return records_to_lm_examples(records)
        if self.prepare:
            records = [(place, self.prepare(rec)) for place, rec in records]
        return records_to_examples(records, self.template, self.label_words, self.joiner)


def _copa(rec: dict) -> dict:
    # MeZO's COPA: "{premise} {so|because} {choice}", each choice scored as a continuation.
    premise = str(rec.get("premise", "")).strip().rstrip(".")
    joint = {"cause": "because", "effect": "so"}.get(rec.get("question"), "so")
    choices = [str(rec.get(k, "")).strip() for k in ("choice1", "choice2")]
    options = [c[:1].lower() + c[1:] for c in choices]
    return {**rec, "premise": premise, "joint": joint, "options": options}


BUILTIN = {
    # Chosen on a tuning split of SST-2 train (docs/design.md, Defaults): zero-shot 0.80 there against 0.54
    # for MeZO's prompt, sst2-mezo.
    "sst2": Task("sst2", "Review: {text}\nSentiment:", {"0": "negative", "1": "positive"},
                 _DATA / "sst2" / "train.tsv", _DATA / "sst2" / "dev.tsv"),
    # MeZO's and P-RGE's SST-2 prompt, "{sentence} It was {terrible|great}", for comparisons with them.
    "sst2-mezo": Task("sst2-mezo", "{text} It was", {"0": "terrible", "1": "great"},
                      _DATA / "sst2" / "train.tsv", _DATA / "sst2" / "dev.tsv"),
    "rte": Task("rte", _NLI, {"entailment": "Yes", "not_entailment": "No"}, joiner=""),
    "cb": Task("cb", _NLI, {"entailment": "Yes", "contradiction": "No", "neutral": "Maybe"}, joiner=""),
    "copa": Task("copa", "{premise} {joint}", None, prepare=_copa),
    "wic": Task("wic", 'Does the word "{word}" have the same meaning in these two sentences? '
                       "Yes, No?\n{sentence1}\n{sentence2}\n", {"false": "No", "true": "Yes"}, joiner=""),
}


def tokenize(engine: Tokenizer, example: Example | LMExample) -> TokenizedExample:
    """Score requests of either kind of example."""
    if isinstance(example, LMExample):
        return tokenize_lm_example(engine, example)
    return tokenize_example(engine, example)


def builtin_task(name: str) -> Task:
    """The built-in task `name`, or a PrgeError listing the known ones."""
    if name not in BUILTIN:
        raise PrgeError(f"--task: unknown task '{name}' (expected one of: {', '.join(BUILTIN)})")
    return BUILTIN[name]
