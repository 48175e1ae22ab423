"""Language-modelling formats on the real model: text, prompt/completion, chat messages."""

import json
from pathlib import Path

import numpy as np
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from prge_gguf.cli import main
from prge_gguf.lm_data import LMExample, chat_segments, records_to_lm_examples, tokenize_lm_example
from prge_gguf.tasks import Task

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruct" / "alpaca_en_demo.json"
CHAT = (
    {"role": "user", "content": "Name a primary colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And another?"},
    {"role": "assistant", "content": "Red, of course."},
)


def _short_alpaca(n):
    rows = json.loads(ALPACA.read_text()) if ALPACA.exists() else []
    rows = [r for r in rows if len(r["instruction"]) + len(r["input"]) + len(r["output"]) < 300][:n]
    if len(rows) < n:
        pytest.skip("../shared/data not present")
    return rows


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_chat_rendering_matches_template_and_scores_only_assistant_turns(engine):
    ex = LMExample("chat:1", messages=CHAT)
    segments = chat_segments(engine.chat_template, engine.special_tokens(), ex)
    own = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        engine.chat_template).render(messages=list(CHAT), add_generation_prompt=False,
                                     **engine.special_tokens())
    assert "".join(text for text, _ in segments) == own
    replies = [text for text, scored in segments if scored]
    assert replies == ["Blue.<|im_end|>\n", "Red, of course.<|im_end|>\n"]

    tok = tokenize_lm_example(engine, ex)
    (req,) = tok.requests
    scored_text = "".join(engine.token_text(c[0]) for c in req.candidates)
    assert scored_text == "Blue.<|im_end|>\nRed, of course.<|im_end|>\n"
    assert tok.n_scored == len(req.positions)
    assert engine.token_text(req.tokens[0]) == "<|im_start|>"  # control tokens parsed as such


def test_prompt_completion_scores_only_the_completion():
    class Chars:
        chat_template = None

        def tokenize(self, text, add_special, parse_special=False):
            return [ord(c) for c in text]

    (ex,) = records_to_lm_examples([("f:1", {"prompt": "ab", "completion": "cd"})])
    tok = tokenize_lm_example(Chars(), ex)
    assert tok.requests[0].tokens == (97, 98, 99, 100)
    assert tok.requests[0].positions == (1, 2) and tok.requests[0].candidates == ((99,), (100,))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["text", "completion", "messages", "alpaca"])
def test_each_format_trains_on_real_data(fmt, tmp_path, capsys):
    rows = _short_alpaca(6)
    pairs = [(r["instruction"] + ("\n" + r["input"] if r["input"] else ""), r["output"]) for r in rows]
    records = {
        "text": [{"text": p + "\n" + o} for p, o in pairs],
        "completion": [{"prompt": p + "\n", "completion": o} for p, o in pairs],
        "messages": [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": o}]}
                     for p, o in pairs],
        "alpaca": rows,  # the shared file's own records, in its own layout: a .json list
    }[fmt]
    if fmt == "alpaca":
        data, valid = tmp_path / "train.json", tmp_path / "valid.json"
        data.write_text(json.dumps(records[:4]))
        valid.write_text(json.dumps(records[4:]))
    else:
        data = _jsonl(tmp_path / "train.jsonl", records[:4])
        valid = _jsonl(tmp_path / "valid.jsonl", records[4:])
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--valid", str(valid), "--steps", "3", "--batch-size", "2",
                 "--targets", "attn_v", "--lr", "1e-2", "--eval-every", "0", "--out", str(out)]) == 0
    rows_out = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows_out if "loss" in r)
    final = rows_out[-1]
    assert final["final_eval_accuracy"] is None and 0 < final["final_eval_loss"] < 20
    assert "loss" in capsys.readouterr().out


def test_chat_without_assistant_turn_is_refused(tmp_path, capsys):
    data = _jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    assert main(["eval", "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {data}:1: chat has no assistant turn (nothing to train on)"


def test_mixed_formats_in_one_file_are_refused(tmp_path):
    from prge_gguf.errors import PrgeError

    data = _jsonl(tmp_path / "mixed.jsonl", [{"text": "plain"}, {"prompt": "a", "completion": "b"}])
    with pytest.raises(PrgeError, match=r"mixed.jsonl:2: record is not in this file's 'text' format"):
        Task("custom", "{text}", None).examples(data)


def test_alpaca_records_are_llama_factory_chats():
    rec = {"system": "Be brief.", "history": [["Hi", "Hello."]], "instruction": "Translate",
           "input": "chat", "output": "cat"}
    (ex,) = records_to_lm_examples([("a.json[0]", rec)])
    assert ex.messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Translate\nchat"}, {"role": "assistant", "content": "cat"})
    (plain,) = records_to_lm_examples([("a.json[1]", {"instruction": "Say hi", "input": "", "output": "hi"})])
    assert plain.messages == ({"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"})


def test_json_list_files_name_the_bad_record(tmp_path):
    from prge_gguf.data import read_records
    from prge_gguf.errors import PrgeError

    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
    assert read_records(good) == [(f"{good}[0]", {"text": "a"}), (f"{good}[1]", {"text": "b"})]
    for content, expected in [('{"text": "a"}', ": expected a JSON list of records, got dict"),
                              ('[{"text": "a"}, 3]', "[1]: expected a JSON object, got int"),
                              ('[{"text": "a"},\n {"text": }]', ":2: malformed JSON (Expecting value")]:
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(PrgeError) as err:
            read_records(bad)
        assert str(err.value).startswith(f"{bad}{expected}"), str(err.value)
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "x", "output": "y", "history": "no"}]))
    with pytest.raises(PrgeError, match=r"alpaca.json\[0\]: 'history' must be a list of"):
        Task("custom", "{text}", None).examples(alpaca)


@pytest.mark.default_model
def test_chat_data_on_a_model_without_a_chat_template_is_one_line(tmp_path, capsys):
    """The default Gemma 3 270M is a base model: chat records and --chat name the way out, and
    the run folder is not made."""
    data = _jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "hello"}]}])
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--steps", "1", "--batch-size", "1", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {data}:1: chat records need a model with tokenizer.chat_template "
        "(the default gemma3-270m is a base model: e.g. --model smollm2-135m)")
    assert not out.exists()
    assert main(["generate", "--prompt", "hi", "--chat", "--max-tokens", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        ": --chat needs a model with tokenizer.chat_template "
        "(the default gemma3-270m is a base model: e.g. --model smollm2-135m)")
