"""GGUF LoRA adapter <-> PEFT folder (adapter_config.json + adapter_model.safetensors).

Three facts make this more than renaming:
- llama.cpp names weights `blk.{i}.attn_q` ...; PEFT names the Hugging Face
  modules `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` ...
- For the llama architecture, llama.cpp's converter permutes the rows of the
  q and k projections (its RoPE layout), and lora_b with them; the PEFT side
  needs the rows in Hugging Face order, so lora_B is un-permuted on export and
  permuted again on import.
- A GGUF may fuse q, k and v into one attn_qkv (Phi-3; any model converted with --fuse-qkv).
  Where the Hugging Face model has separate q/k/v modules, its LoRA B A (B's rows q|k|v) goes
  out as exactly three LoRAs that share A, and comes back fused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from prge_gguf import __version__
from prge_gguf.errors import PrgeError
from prge_gguf.gguf_header import GGUFHeader
from prge_gguf.hf_names import QKV, hf_modules, lora_b_rows, peft_unnamed
from prge_gguf.lora import LoraAdapter
from prge_gguf.targets import TARGET_NAME

_PEFT_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")


def split_qkv(adapter: LoraAdapter, n_head: int, n_head_kv: int) -> LoraAdapter:
    """`adapter` with each fused attn_qkv LoRA, where its architecture's Hugging Face model has
    no fused module, as three LoRAs on attn_q, attn_k, attn_v that share its A (exact)."""
    if "attn_qkv" in hf_modules(adapter.architecture):
        return adapter
    a, b = {}, {}
    for name in adapter.names:
        m = TARGET_NAME.match(name)
        if not m or m.group(2) != "attn_qkv":
            a[name], b[name] = adapter.a[name], adapter.b[name]
            continue
        head = adapter.b[name].shape[0] // (n_head + 2 * n_head_kv)
        parts = np.split(adapter.b[name], [n_head * head, (n_head + n_head_kv) * head])
        for target, part in zip(QKV, parts, strict=True):
            split = f"blk.{m.group(1)}.{target}.weight"
            a[split], b[split] = adapter.a[name], part
    return LoraAdapter(adapter.architecture, adapter.alpha, a, b, adapter.fingerprint)


def _fuse_qkv(a: dict[str, np.ndarray], b: dict[str, np.ndarray], source: Path) -> None:
    """Replace, in place, each block's q, k, v LoRAs by one attn_qkv LoRA (the inverse of
    `split_qkv`): exact only where the three share A, so anything else is refused."""
    layers = sorted({m.group(1) for n in a if (m := TARGET_NAME.match(n)) and m.group(2) in QKV})
    for layer in layers:
        names = [f"blk.{layer}.{t}.weight" for t in QKV]
        if not all(n in a and np.array_equal(a[n], a[names[0]]) for n in names):
            raise PrgeError(f"{source}: block {layer}: this model fuses q, k and v into one attn_qkv, which "
                            "takes q_proj, k_proj and v_proj LoRAs only with one shared lora_A (as "
                            "'prge-gguf export' writes them)")
        fused = f"blk.{layer}.attn_qkv.weight"
        a[fused], b[fused] = a[names[0]], np.concatenate([b[n] for n in names])
        for n in names:
            del a[n], b[n]


def to_peft(adapter: LoraAdapter, out_dir: str | Path, *, n_head: int, n_head_kv: int,
            base_model: str = "") -> Path:
    """Write `adapter` as a PEFT LoRA folder; returns the folder."""
    out_dir = Path(out_dir)
    hf = hf_modules(adapter.architecture)
    if unnamed := peft_unnamed(adapter):
        raise PrgeError(f"{unnamed[0]}: no PEFT module for this tensor of a {adapter.architecture} model "
                        f"(expected one of {', '.join(hf)})")
    adapter = split_qkv(adapter, n_head, n_head_kv)
    tensors, modules, layers = {}, set(), set()
    for name in adapter.names:
        layer, target = TARGET_NAME.match(name).groups()
        b = lora_b_rows(adapter.b[name], target, adapter.architecture, n_head, n_head_kv, to_hf=True)
        prefix = f"base_model.model.model.layers.{layer}.{hf[target]}"
        tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(adapter.a[name])
        tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b)
        modules.add(hf[target].split(".")[-1])
        layers.add(int(layer))
    config = {
        "base_model_name_or_path": base_model, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "lora_alpha": adapter.alpha,
        "lora_dropout": 0.0, "modules_to_save": None, "peft_type": "LORA", "r": adapter.rank,
        "target_modules": sorted(modules), "task_type": "CAUSAL_LM", "use_dora": False,
        # an adapter on some blocks only (--num-layers): PEFT then builds LoRA layers there alone
        "layers_to_transform": sorted(layers),
        "use_rslora": False,
        # Ours, ignored by PEFT: what to check when converting back.
        "prge_gguf": {"version": __version__, "architecture": adapter.architecture,
                      "base_fingerprint": adapter.fingerprint, "n_head": n_head, "n_head_kv": n_head_kv},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def to_peft_for(adapter: LoraAdapter, out_dir: str | Path, header: GGUFHeader) -> Path:
    """`to_peft` with the head counts and base-model name of the GGUF whose `header` is given."""
    n_head, n_head_kv = header.head_counts
    return to_peft(adapter, out_dir, n_head=n_head, n_head_kv=n_head_kv,
                   base_model=str(header.metadata.get("general.name", "")))


def from_peft(folder: str | Path, *, architecture: str | None = None, n_head: int | None = None,
              n_head_kv: int | None = None, fused_qkv: bool = False) -> LoraAdapter:
    """Read a PEFT LoRA folder as a GGUF-layout adapter. Architecture and head counts come
    from our own config block when present, else from the arguments (the base GGUF's);
    `fused_qkv`: the base GGUF has attn_qkv weights, so q, k, v LoRAs are fused into them."""
    folder = Path(folder)
    config_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    for f in (config_file, weights):
        if not f.is_file():
            raise PrgeError(f"{folder}: not a PEFT adapter folder ({f.name} missing)")
    config = json.loads(config_file.read_text())
    ours = config.get("prge_gguf", {})
    arch = ours.get("architecture", architecture)
    n_head, n_head_kv = ours.get("n_head", n_head), ours.get("n_head_kv", n_head_kv)
    if arch is None or n_head is None or n_head_kv is None:
        raise PrgeError(f"{folder}: pass the base model so that its architecture and head counts are known")
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("use_rslora"):
        raise PrgeError(f"{config_file}: only plain LoRA adapters convert (no DoRA / rsLoRA)")
    back = {v: k for k, v in hf_modules(arch).items()}
    a, b = {}, {}
    for key, value in load_file(str(weights)).items():
        m = _PEFT_KEY.match(key)
        if not m or m.group(2) not in back:
            raise PrgeError(f"{weights}: tensor {key} is not a LoRA weight of a known projection")
        target = back[m.group(2)]
        name = f"blk.{m.group(1)}.{target}.weight"
        value = value.astype(np.float32)
        if m.group(3) == "B":
            value = lora_b_rows(value, target, arch, n_head, n_head_kv, to_hf=False)
        (a if m.group(3) == "A" else b)[name] = value
    unpaired = sorted(set(a) ^ set(b))
    if unpaired:
        raise PrgeError(f"{weights}: {unpaired[0]} has only one of lora_A/lora_B")
    if fused_qkv:
        _fuse_qkv(a, b, weights)
    return LoraAdapter(arch, float(config["lora_alpha"]), a, b, ours.get("base_fingerprint", ""))
