"""The tool never writes over a user's file, never wastes a run, and refuses wrong setups
before work starts: each case one clear line, exit code 2, no user file changed."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from prge_gguf.cli import main
from prge_gguf.gguf_header import read_header
from prge_gguf.lora import init_lora_fa, write_gguf

ROWS = [{"text": "a joy to watch", "label": 1}, {"text": "tedious", "label": 0},
        {"text": "superb acting", "label": 1}, {"text": "a dull mess", "label": 0}]
WORDS = "0=negative,1=positive"


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def _tree(root):
    """path -> sha256 of every file under `root`: what a refused command must leave as it was."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def adapter_file(tmp_path, model_path):
    path = tmp_path / "mine" / "adapter.gguf"
    path.parent.mkdir()
    write_gguf(init_lora_fa(read_header(model_path), ["attn_v"], 2, 4.0, seed=0), path)
    return path


def _refused(capsys, tmp_path, argv, expected):
    """Run `argv`: it must fail with exactly `expected` (one line; a str, or a callable check)
    and leave every file under tmp_path as it was, adding none."""
    before = _tree(tmp_path)
    code, err = _run(capsys, *argv)
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err
    assert (err == f"error: {expected}") if isinstance(expected, str) else expected(err), err
    assert _tree(tmp_path) == before


# -- never overwrite ------------------------------------------------------------------------------

def test_train_into_a_folder_of_other_files_is_refused(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "adapter.gguf").write_bytes(b"someone else's adapter")
    _refused(capsys, tmp_path, ["train", "--task", "sst2", "--out", out],
             f"--out {out} holds other files (adapter.gguf, notes.txt): pass --force to write the run "
             "beside them, or choose another folder")


def test_the_adapter_a_run_starts_from_is_never_its_output(capsys, tmp_path, adapter_file):
    for force in ([], ["--force"]):
        _refused(capsys, tmp_path, ["train", "--task", "sst2", "--adapter", adapter_file,
                                    "--out", adapter_file.parent, *force],
                 f"--out {adapter_file.parent}: the run would write over {adapter_file}, an input of this "
                 "command: choose another folder")


def test_export_never_replaces_a_file_unasked_nor_an_input(capsys, tmp_path, adapter_file, model_path):
    taken = tmp_path / "taken.gguf"
    taken.write_bytes(b"precious")
    _refused(capsys, tmp_path, ["export", adapter_file, "--to", "gguf", "--out", taken],
             f"--out {taken} exists: pass --force to replace it, or choose another name")
    for target, out in (("gguf", adapter_file), ("merged", model_path)):
        _refused(capsys, tmp_path, ["export", adapter_file, "--to", target, "--out", out, "--force"],
                 f"--out {out} is also an input of this command: choose another output")
    folder = tmp_path / "peft"
    folder.mkdir()
    (folder / "README.md").write_text("mine")
    _refused(capsys, tmp_path, ["export", adapter_file, "--to", "peft", "--out", folder],
             f"--out {folder} is not empty: pass --force to write into it, or choose another")
    assert main(["export", str(adapter_file), "--to", "gguf", "--out", str(taken), "--force"]) == 0
    assert taken.read_bytes() == adapter_file.read_bytes()


@pytest.mark.parametrize("case", ["missing parent", "a folder", "/proc"])
def test_export_to_a_path_it_cannot_write_is_one_line(capsys, tmp_path, adapter_file, case):
    out = {"missing parent": tmp_path / "no" / "such.gguf", "a folder": tmp_path,
           "/proc": "/proc/prge-test.gguf"}[case]
    expected = {"missing parent": f"--out {out}: folder {tmp_path / 'no'} does not exist",
                "a folder": f"--out {out} is a folder: expected a file name"}.get(case)
    _refused(capsys, tmp_path, ["export", adapter_file, "--to", "gguf", "--out", out],
             expected or (lambda err: err.startswith(f"error: --out {out}: ")))


def test_output_files_take_the_users_umask(tmp_path, adapter_file):
    previous = os.umask(0o022)
    try:
        assert main(["export", str(adapter_file), "--to", "gguf", "--out", str(tmp_path / "a.gguf")]) == 0
        assert main(["export", str(adapter_file), "--to", "peft", "--out", str(tmp_path / "peft")]) == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "a.gguf").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "peft").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "peft" / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o644


# -- wrong setups refused before work -------------------------------------------------------------

def _bad_setups(tmp_path):
    data = _jsonl(tmp_path / "train.jsonl", ROWS)
    text_only = _jsonl(tmp_path / "text.jsonl", [{"text": r["text"]} for r in ROWS])
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"text": "fine", "label": 1}\n{"text": "caf\xe9", "label": 0}\n')
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    out = tmp_path / "run"
    train = ["train", "--data", data, "--label-words", WORDS, "--out", out]
    return [
        (["train", "--data", text_only, "--label-words", WORDS, "--out", out],
         f"{text_only}:1: a 'text' record with no 'label' (language modelling), but "
         "--template/--label-words set up classification (record has: text): add 'label' fields, "
         "or drop those flags to train on the text"),
        ([*train, "--template", "Review:"],
         "--template: it names no record field (e.g. '{text}'): every example would read the same"),
        ([*train, "--template", "{text} {label}"],
         "--template: it reads {label}, the answer: the model would see it in the prompt"),
        ([*train, "--template", "{text"],
         "--template: expected '}' before end of string (write {{ and }} for a literal brace)"),
        (["train", "--data", data, "--label-words", "0=good,1=good", "--out", out],
         "--label-words: labels '0' and '1' share the word 'good': the model could not tell them apart"),
        (["train", "--data", data, "--label-words", "0:negative,1:positive", "--out", out],
         "--label-words: '0:negative': write label=word (with '='), not label:word"),
        ([*train, "--steps", "0"], "--steps must be >= 1"),
        ([*train, "--batch-size", "1000"],
         "--batch-size 1000 is more than the 4 training examples: lower it (at most 4)"),
        ([*train, "--rank", "100000"],
         "--rank 100000 is larger than blk.0.attn_v.weight's smaller dimension (192 of 192 x 576): "
         "at most 192"),
        (["train", "--data", latin1, "--label-words", WORDS, "--out", out],
         f"{latin1}:2: not UTF-8 text (byte 0xe9): save the file as UTF-8"),
        (["train", "--data", data, "--out", out],
         f"{data}:1: no 'options' field and no --label-words to choose from (labels found: 0, 1; "
         "e.g. --label-words '0=WORD,1=WORD')"),
        (["train", "--task", "sst2", "--out", a_file], f"--out {a_file} is a file: expected a folder"),
        (["eval", "--model", tmp_path, "--task", "sst2"],
         f"--model {tmp_path} is a folder: pass the .gguf file (GGUF files there: none)"),
    ]


def test_wrong_setups_are_refused_before_any_work(capsys, tmp_path):
    for argv, expected in _bad_setups(tmp_path):
        _refused(capsys, tmp_path, argv, expected)


# -- formats and small things ---------------------------------------------------------------------

@pytest.mark.slow
def test_csv_data_and_eval_progress(capsys, tmp_path):
    data = tmp_path / "rows.csv"
    data.write_text('text,label\n"great, simply great",1\nawful,0\n')
    code, err = _run(capsys, "eval", "--data", data, "--label-words", WORDS, "--json")
    assert code == 0, err
    assert "eval" in err and "row" in err  # the progress bar, with its rows/s


def test_sharegpt_records_are_chats(engine, tmp_path):
    from prge_gguf.tasks import Task, tokenize

    task = Task("custom", "{text}", None, classify=False)
    sharegpt = {"system": "Be brief.", "conversations": [{"from": "human", "value": "Hi"},
                                                          {"from": "gpt", "value": "Hello!"}]}
    messages = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Hello!"}]}
    a, b = _jsonl(tmp_path / "a.jsonl", [sharegpt]), _jsonl(tmp_path / "b.jsonl", [messages])
    got, want = tokenize(engine, task.examples(a)[0]), tokenize(engine, task.examples(b)[0])
    assert got.requests == want.requests and got.n_scored == want.n_scored > 0


def test_sharegpt_unknown_role_is_named(capsys, tmp_path):
    data = _jsonl(tmp_path / "chat.jsonl", [{"conversations": [{"from": "robot", "value": "beep"}]}])
    _refused(capsys, tmp_path, ["train", "--data", data, "--out", tmp_path / "run"],
             f"{data}:1: conversations[0]: unknown role 'robot' (expected one of: human, user, gpt, "
             "assistant, system)")


def test_info_on_an_adapter(capsys, adapter_file):
    assert main(["info", str(adapter_file)]) == 0
    out = capsys.readouterr().out
    assert "LoRA adapter for architecture llama: rank 2, alpha 4" in out
    assert "attn_v on 30 blocks (0..29)" in out and "?" not in out


def test_generate_reads_backslash_n_as_a_newline(capsys):
    assert main(["generate", "--prompt", "Q: 2+2?\\nA:", "--max-tokens", "1"]) == 0
    assert "### prompt\nQ: 2+2?\nA:\n" in capsys.readouterr().out


def test_scratch_folders_of_dead_processes_are_removed(model_path, tmp_path):
    from prge_gguf.engine.llama import LlamaEngine, _scratch_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    root = _scratch_dir()
    stale = os.path.join(root, f"prge-adapters-{dead}-x1")
    os.makedirs(stale)
    with LlamaEngine(model_path, n_ctx=64, threads=1) as eng:
        assert not os.path.exists(stale)
        mine = eng._tmp.name
        assert os.path.isdir(mine)
    assert not os.path.exists(mine)


def test_a_run_that_cannot_fit_in_memory_stops_before_loading(capsys, tmp_path, monkeypatch):
    from prge_gguf import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 100 * 2**20)
    _refused(capsys, tmp_path, ["train", "--task", "sst2", "--out", tmp_path / "run"],
             lambda err: err.startswith("error: this run needs about 0.") and "0.1 GiB is free: lower --rank"
             in err)
    # The estimate: the model file, with the KV cache, logits and adapter copies on top.
    from prge_gguf.lora import check_rank
    from prge_gguf.models import default_model_path

    header = read_header(default_model_path())
    needed = memory.train_bytes(header, check_rank(header, ["attn_q", "attn_v"], 8), 8, 1, 768)
    assert default_model_path().stat().st_size < needed < default_model_path().stat().st_size + 100 * 2**20


def test_a_run_folder_that_cannot_be_made_is_one_line(capsys, tmp_path):
    data = _jsonl(tmp_path / "train.jsonl", ROWS)
    code, err = _run(capsys, "train", "--data", data, "--label-words", WORDS, "--batch-size", 2,
                     "--steps", 1, "--out", "/proc/prge-run")
    assert code == 2
    assert err.startswith("error: --out /proc/prge-run: cannot create the run folder (") and "\n" not in err


def test_a_run_without_held_out_data_says_so(capsys, tmp_path):
    data = _jsonl(tmp_path / "train.jsonl", ROWS)
    code, err = _run(capsys, "train", "--data", data, "--label-words", WORDS, "--batch-size", 2,
                     "--steps", 1, "--targets", "attn_v", "--out", tmp_path / "run")
    assert code == 0
    assert "note: no held-out data (--valid): no evaluation during training, and no best.gguf" in err
    assert (tmp_path / "run" / "adapter.gguf").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _modelfile_instructions(text):
    """(INSTRUCTION, argument) pairs as Ollama's Modelfile syntax reads them: one instruction a
    line, '#' comments, an argument in triple quotes running over lines."""
    out, lines = [], iter(text.splitlines())
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        name, _, arg = line.partition(" ")
        if arg.startswith('"""'):
            while not (arg.endswith('"""') and len(arg) >= 6):
                arg += "\n" + next(lines)
            arg = arg[3:-3]
        out.append((name, arg))
    return out


def test_export_to_ollama_writes_a_modelfile_ollama_takes(tmp_path, adapter_file, model_path):
    out = tmp_path / "ollama"
    assert main(["export", str(adapter_file), "--to", "ollama", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "adapter.gguf"]
    assert (out / "adapter.gguf").read_bytes() == adapter_file.read_bytes()
    got = _modelfile_instructions((out / "Modelfile").read_text())
    assert got[:2] == [("FROM", str(model_path.resolve())),
                       ("ADAPTER", str((out / "adapter.gguf").resolve()))]
    assert {name for name, _ in got} == {"FROM", "ADAPTER", "TEMPLATE", "PARAMETER"}
    # SmolLM2's chat template is ChatML: its Go form, with the turn's end as a stop token.
    template = dict(got)["TEMPLATE"]
    assert template.startswith("{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>")
    assert "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>" in template
    assert template.endswith("<|im_start|>assistant\n")
    assert template.count("{{") == template.count("}}")
    assert ("PARAMETER", 'stop "<|im_end|>"') in got
