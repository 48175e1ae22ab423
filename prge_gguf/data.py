"""Classification data: files -> examples -> token-level score requests (`scoring` turns the
engine's log-probs into option scores and losses).

An example is a context and k options; its score for option j is the summed
log-prob of option j's tokens after the context. Single-token options share one
sequence (one logit row gives every option); multi-token options get a sequence each.
"""

from __future__ import annotations

import csv
import io
import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prge_gguf.errors import PrgeError
from prge_gguf.scoring import ScoreRequest, TokenizedExample, Tokenizer


@dataclass(frozen=True)
class Example:
    """A classification example: the model reads `context` and picks one of `options`."""

    context: str
    options: tuple[str, ...]
    label: int
    place: str = ""  # "file:line", for errors


def parse_label_words(spec: str) -> dict[str, str]:
    """`"0=terrible,1=great"` or `"terrible,great"` (labels 0, 1, ...) -> {label: word}."""
    words: dict[str, str] = {}
    for i, item in enumerate(p.strip() for p in spec.split(",")):
        label, sep, word = item.partition("=")
        if not sep:
            if ":" in item:
                raise PrgeError(f"--label-words: '{item}': write label=word (with '='), not label:word")
            label, word = str(i), item
        if not word.strip() or not label.strip():
            raise PrgeError(f"--label-words: empty label or word in '{item}' (expected label=word)")
        label, word = label.strip(), word.strip()
        if label in words:
            raise PrgeError(f"--label-words: label '{label}' is given twice")
        if twin := next((other for other, w in words.items() if w == word), None):
            raise PrgeError(f"--label-words: labels '{twin}' and '{label}' share the word '{word}': "
                            "the model could not tell them apart")
        words[label] = word
    return words


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape_template(template: str) -> str:
    """`\\n`, `\\t` and `\\\\` typed in a template become newline, tab and backslash (as llama.cpp
    reads its prompts), so a shell argument can hold a multi-line template."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], template)


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def check_template(template: str) -> str:
    """`template` once it is known to render: its braces pair up, it reads at least one record
    field, and not `label` (the answer would be in the prompt)."""
    try:
        fields = _fields(template)
        template.format_map(dict.fromkeys(fields, ""))
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise PrgeError(f"--template: {exc} (write {{{{ and }}}} for a literal brace)") from None
    if not fields:
        raise PrgeError("--template: it names no record field (e.g. '{text}'): "
                        "every example would read the same")
    if "label" in fields:
        raise PrgeError("--template: it reads {label}, the answer: the model would see it in the prompt")
    return template


def _label_text(raw: object) -> str:
    """A record's label as --label-words names it (JSON true/false as true/false)."""
    return str(raw).lower() if isinstance(raw, bool) else str(raw).strip()


def _label_of(place: str, rec: dict, labels: list[str]) -> int:
    label = _label_text(rec["label"])
    if label not in labels:
        raise PrgeError(
            f"{place}: label '{label}' has no label word (known: {', '.join(labels)}); "
            f"add it to --label-words"
        )
    return labels.index(label)


def records_to_examples(
    records: Sequence[tuple[str, dict]],
    template: str,
    label_words: dict[str, str] | None,
    joiner: str = " ",
) -> list[Example]:
    """Render `(place, record)` pairs; `place` ("file:line") names the record in errors.

    With `label_words` the options are those words (each after `joiner`); a
    record with an `options` list is multiple choice instead (`label` = index).
    """
    labels = list(label_words or {})
    fields = _fields(template)
    examples = []
    for place, rec in records:
        for f in [*fields, "label"]:
            if f not in rec:
                raise PrgeError(f"{place}: missing field '{f}' (record has: {', '.join(rec)})")
        context = template.format_map({f: str(rec[f]).strip() for f in fields})
        if "options" in rec:
            options = rec["options"]
            if not isinstance(options, list) or len(options) < 2:
                raise PrgeError(f"{place}: field 'options' must be a list of at least 2 strings")
            if not isinstance(rec["label"], int) or not 0 <= rec["label"] < len(options):
                raise PrgeError(f"{place}: label {rec['label']!r} is not an index into its "
                                f"{len(options)} options")
            examples.append(Example(context, tuple(joiner + str(o) for o in options), rec["label"], place))
        elif label_words:
            options_ = tuple(joiner + label_words[lab] for lab in labels)
            examples.append(Example(context, options_, _label_of(place, rec, labels), place))
        else:
            found = sorted({_label_text(r["label"]) for _, r in records if "label" in r})
            raise PrgeError(f"{place}: no 'options' field and no --label-words to choose from (labels "
                            f"found: {', '.join(found[:10])}; e.g. --label-words "
                            f"'{','.join(f'{lab}=WORD' for lab in found[:3])}')")
    if not examples:
        raise PrgeError("dataset is empty: no examples to train or evaluate on")
    return examples


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """Records of a `.jsonl` file (one JSON object a line; the default for other names), a `.json`
    file holding one list of objects (Alpaca's and LLaMA-Factory's layout), or a `.tsv` or `.csv`
    file with a header row."""
    path = Path(path)
    if not path.is_file():
        raise PrgeError(f"{path}: data file not found" + (" (it is a folder)" if path.is_dir() else ""))
    text = read_utf8(path)
    if path.suffix == ".json":
        return _json_list_records(path, text)
    if path.suffix in (".tsv", ".csv"):
        rows = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix == ".tsv" else ",",
                              quoting=csv.QUOTE_NONE if path.suffix == ".tsv" else csv.QUOTE_MINIMAL)
        try:
            return [(f"{path}:{i}", dict(r)) for i, r in enumerate(rows, start=2)]
        except csv.Error as exc:
            raise PrgeError(f"{path}:{rows.line_num}: malformed {path.suffix[1:].upper()} ({exc})") from None
    hint = "" if path.suffix == ".jsonl" else " (expected a .jsonl, .json, .tsv or .csv file)"
    records = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PrgeError(f"{path}:{i}: malformed JSON ({exc.msg} at column {exc.colno}){hint}") from None
        if not isinstance(rec, dict):
            raise PrgeError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        records.append((f"{path}:{i}", rec))
    return records


def read_utf8(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark dropped), or an error naming the line of the
    first byte that is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PrgeError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}): save the file as "
                        "UTF-8") from None


def _json_list_records(path: Path, text: str) -> list[tuple[str, dict]]:
    """The objects of a .json file's top-level list, each placed as `path[index]`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PrgeError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, list):
        raise PrgeError(f"{path}: expected a JSON list of records, got {type(data).__name__} "
                        "(or use .jsonl: one JSON object a line)")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise PrgeError(f"{path}[{i}]: expected a JSON object, got {type(rec).__name__}")
    return [(f"{path}[{i}]", rec) for i, rec in enumerate(data)]


def tokenize_example(engine: Tokenizer, ex: Example) -> TokenizedExample:
    """Build the score requests for one example."""
    ctx = engine.tokenize(ex.context, add_special=True)
    opts = [engine.tokenize(o, add_special=False) for o in ex.options]
    last = len(ctx) - 1
    firsts = [o[0] for o in opts]
    if all(len(o) == 1 for o in opts) and len(set(firsts)) == len(firsts):
        req = ScoreRequest(tuple(ctx), (last,), (tuple(firsts),))
        return TokenizedExample((req,), ((tuple(range(len(opts))),),), len(opts), ex.label, place=ex.place)
    requests, owners = [], []
    for j, o in enumerate(opts):
        positions = tuple(range(last, last + len(o)))
        requests.append(ScoreRequest(tuple(ctx + o), positions, tuple((t,) for t in o)))
        owners.append(tuple((j,) for _ in o))
    return TokenizedExample(tuple(requests), tuple(owners), len(opts), ex.label, place=ex.place)


def decode_size(train: Sequence[TokenizedExample], held_out: Sequence[TokenizedExample],
                batch_size: int, cap: int) -> int:
    """Tokens per decode (the context size) for training on `train`: a typical batch of
    `batch_size` examples with a quarter to spare, in steps of 64, at most `cap`, and never
    less than the longest sequence. A larger batch is scored in two decodes; a smaller context
    is a smaller KV cache and compute buffer (llama.cpp sizes both by it)."""
    examples = [*train, *held_out]
    if not examples:
        return cap
    longest = max(ex.longest for ex in examples)
    typical = 1.25 * batch_size * float(np.mean([ex.n_tokens for ex in train or held_out]))
    return max(longest, min(cap, 64 * int(np.ceil(typical / 64))))


def fit_length(ex: TokenizedExample, max_len: int) -> TokenizedExample:
    """`ex` with every sequence cut to `max_len` tokens. Language modelling keeps the start
    (scores past the cut are dropped); a choice keeps the end of its context, where the
    answer is, dropping tokens after the first (BOS)."""
    requests, owners = [], []
    for req, own in zip(ex.requests, ex.owners, strict=True):
        over = req.n_tokens - max_len
        if over <= 0:
            requests.append(req)
            owners.append(own)
        elif ex.n_scored:
            keep = [k for k, p in enumerate(req.positions) if p + 1 < max_len]
            requests.append(ScoreRequest(req.tokens[:max_len], tuple(req.positions[k] for k in keep),
                                         tuple(req.candidates[k] for k in keep)))
            owners.append(tuple(own[k] for k in keep))
        else:
            if min(req.positions) - over < 1:
                raise PrgeError(f"{ex.place}: its answer alone is longer than --max-seq-len {max_len}")
            requests.append(ScoreRequest(req.tokens[:1] + req.tokens[1 + over:],
                                         tuple(p - over for p in req.positions), req.candidates))
            owners.append(own)
    n_scored = sum(len(r.positions) for r in requests) if ex.n_scored else 0
    if ex.n_scored and not n_scored:
        raise PrgeError(f"{ex.place}: nothing left to score within --max-seq-len {max_len}")
    return TokenizedExample(tuple(requests), tuple(owners), ex.n_options, ex.label, n_scored, ex.place)

