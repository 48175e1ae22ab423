"""Language-modelling records: `text`, `prompt`/`completion`, chat `messages` and Alpaca's
`instruction`/`input`/`output` -> scored tokens.

The loss is the mean negative log-likelihood of the scored tokens: all of
`text`, only the `completion`, or only the assistant turns of a chat rendered
with the model's own chat template (GGUF `tokenizer.chat_template`). An Alpaca
record is such a chat, as LLaMA-Factory builds it: optional `system`, the
`history` pairs, then `instruction` (and `input` on the next line) from the
user and `output` from the assistant.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from prge_gguf.errors import PrgeError
from prge_gguf.models import CHAT_MODEL_HINT
from prge_gguf.scoring import ScoreRequest, TokenizedExample, Tokenizer


@dataclass(frozen=True)
class LMExample:
    """Text segments in order, each scored or not; or chat `messages` rendered at tokenization."""

    place: str
    segments: tuple[tuple[str, bool], ...] = ()
    messages: tuple[dict, ...] = ()


# ShareGPT's roles (LLaMA-Factory's and axolotl's `conversations` of {from, value}) as chat roles.
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}


def lm_format(record: dict) -> str | None:
    """'messages', 'sharegpt', 'alpaca', 'completion' or 'text' for language-modelling records;
    None for classification."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "completion" in record:
        return "completion"
    if "text" in record and "label" not in record and "options" not in record:
        return "text"
    return None


def records_to_lm_examples(records: list[tuple[str, dict]]) -> list[LMExample]:
    """LM examples of `(place, record)` pairs, all of the first record's format."""
    kind = lm_format(records[0][1])
    examples = []
    for place, rec in records:
        if lm_format(rec) != kind:
            raise PrgeError(f"{place}: record is not in this file's '{kind}' format "
                            f"(fields: {', '.join(rec)})")
        if kind == "text":
            examples.append(LMExample(place, ((str(rec["text"]), True),)))
        elif kind == "completion":
            if "prompt" not in rec:
                raise PrgeError(f"{place}: missing field 'prompt' beside 'completion'")
            examples.append(LMExample(place, ((str(rec["prompt"]), False), (str(rec["completion"]), True))))
        else:
            if kind == "sharegpt":
                messages = _sharegpt_messages(place, rec)
            elif kind == "alpaca":
                messages = _alpaca_messages(place, rec)
            else:
                messages = rec["messages"]
            examples.append(LMExample(place, messages=_checked_messages(place, messages)))
    return examples


def _alpaca_messages(place: str, rec: dict) -> list[dict]:
    """An Alpaca record as chat messages (LLaMA-Factory's rendering of the format)."""
    history = rec.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 2 for h in history):
        raise PrgeError(f"{place}: 'history' must be a list of [instruction, response] pairs")
    query = "\n".join(str(rec[k]) for k in ("instruction", "input") if rec.get(k))
    turns = [*history, (query, rec["output"])]
    system = [{"role": "system", "content": str(rec["system"])}] if rec.get("system") else []
    return system + [{"role": role, "content": str(text)}
                     for q, a in turns for role, text in (("user", q), ("assistant", a))]


def _sharegpt_messages(place: str, rec: dict) -> list[dict]:
    """A ShareGPT record (`conversations` of {from, value}; roles human/gpt/system, and an
    optional top-level `system`) as chat messages."""
    turns = rec["conversations"]
    if not isinstance(turns, list):
        raise PrgeError(f"{place}: 'conversations' must be a list of {{from, value}} objects")
    system = [{"role": "system", "content": str(rec["system"])}] if rec.get("system") else []
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise PrgeError(f"{place}: conversations[{i}] needs 'from' and 'value'")
        if turn["from"] not in _SHAREGPT_ROLES:
            raise PrgeError(f"{place}: conversations[{i}]: unknown role '{turn['from']}' "
                            f"(expected one of: {', '.join(_SHAREGPT_ROLES)})")
        messages.append({"role": _SHAREGPT_ROLES[turn["from"]], "content": str(turn["value"])})
    return system + messages


def _checked_messages(place: str, messages: object) -> tuple[dict, ...]:
    if not isinstance(messages, list) or not messages:
        raise PrgeError(f"{place}: 'messages' must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise PrgeError(f"{place}: messages[{i}] needs 'role' and 'content'")
    if not any(m["role"] == "assistant" for m in messages):
        raise PrgeError(f"{place}: chat has no assistant turn (nothing to train on)")
    return tuple(messages)


def _renderer(template: str, special: dict[str, str]):
    # HF's chat templates are rendered with these Jinja settings by transformers and llama.cpp.
    compiled = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)

    def render(msgs: tuple[dict, ...], generation_prompt: bool) -> str:
        return compiled.render(messages=list(msgs), add_generation_prompt=generation_prompt, **special)

    return render


def generation_prompt(template: str, special: dict[str, str], user_text: str) -> str:
    """`user_text` as one user turn, followed by the template's assistant header."""
    try:
        return _renderer(template, special)(({"role": "user", "content": user_text},), True)
    except TemplateError as exc:
        raise PrgeError(f"the model's chat template failed: {exc}") from None


def chat_segments(template: str, special: dict[str, str], ex: LMExample) -> tuple[tuple[str, bool], ...]:
    """Render `ex.messages` turn by turn; the text of each assistant reply (after the
    template's generation prompt) is scored, everything else is context."""
    try:
        render = _renderer(template, special)

        segments, done = [], ""
        for i, m in enumerate(ex.messages):
            full = render(ex.messages[: i + 1], False)
            if m["role"] == "assistant":
                head = render(ex.messages[:i], True)
                if not (head.startswith(done) and full.startswith(head)):
                    raise PrgeError(f"{ex.place}: the chat template does not render turn by turn")
                segments += [(head[len(done):], False), (full[len(head):], True)]
            else:
                if not full.startswith(done):
                    raise PrgeError(f"{ex.place}: the chat template does not render turn by turn")
                segments.append((full[len(done):], False))
            done = full
    except TemplateError as exc:
        raise PrgeError(f"{ex.place}: the model's chat template failed: {exc}") from None
    return tuple((text, scored) for text, scored in segments if text)


def tokenize_lm_example(engine: Tokenizer, ex: LMExample) -> TokenizedExample:
    """One score request over the whole sequence, reading each scored token's log-prob."""
    if ex.messages:
        if not engine.chat_template:
            raise PrgeError(f"{ex.place}: chat records need a model with tokenizer.chat_template "
                            f"{CHAT_MODEL_HINT}")
        segments, special = chat_segments(engine.chat_template, engine.special_tokens(), ex), True
    else:
        segments, special = ex.segments, False
    tokens: list[int] = []
    scored: list[int] = []
    for i, (text, is_scored) in enumerate(segments):
        piece = engine.tokenize(text, add_special=(i == 0), parse_special=special)
        if is_scored:
            scored.extend(range(len(tokens), len(tokens) + len(piece)))
        tokens.extend(piece)
    positions = tuple(p - 1 for p in scored if p > 0)
    if not positions:
        raise PrgeError(f"{ex.place}: no tokens to score (empty completion or text?)")
    request = ScoreRequest(tuple(tokens), positions, tuple((tokens[p + 1],) for p in positions))
    owners = (tuple((0,) for _ in positions),)
    return TokenizedExample((request,), owners, n_options=1, label=0, n_scored=len(positions), place=ex.place)
