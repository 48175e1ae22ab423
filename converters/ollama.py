"""An Ollama Modelfile for a base GGUF and a LoRA adapter: `ollama create NAME -f DIR/Modelfile`.

Ollama's templates are Go templates, not the Jinja of `tokenizer.chat_template`; for the chat
formats recognised by their control tokens the Modelfile carries the Go form and the stop tokens,
and for any other model it leaves the template to Ollama, which reads it from the GGUF.
"""

from __future__ import annotations

from pathlib import Path

from prge_gguf.gguf_header import GGUFHeader

# (a control token that marks the format in the Jinja template, the Go template, stop tokens)
_CHAT_FORMATS = (
    ("<|im_start|>",  # ChatML: SmolLM2, Qwen
     "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
     "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
     "<|im_start|>assistant\n",
     ("<|im_end|>", "<|im_start|>")),
    ("<start_of_turn>",  # Gemma: the system prompt goes first in the user's turn
     "{{- if .System }}<start_of_turn>user\n{{ .System }}<end_of_turn>\n{{ end }}"
     "{{- range .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}user{{ end }}\n"
     "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
     ("<end_of_turn>",)),
    ("<|start_header_id|>",  # Llama 3
     "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
     "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
     "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
     ("<|eot_id|>",)),
)


def modelfile(base: Path, adapter: Path, header: GGUFHeader) -> str:
    """The Modelfile text: FROM the base GGUF, ADAPTER, and the chat template and stop tokens
    where the base's chat template is one of the known formats."""
    lines = ["# Made by prge-gguf: ollama create NAME -f Modelfile", f"FROM {base.resolve()}",
             f"ADAPTER {adapter.resolve()}"]
    jinja = header.metadata.get("tokenizer.chat_template")
    known = next((fmt for fmt in _CHAT_FORMATS if isinstance(jinja, str) and fmt[0] in jinja), None)
    if known is None:
        lines.append("# No TEMPLATE: Ollama reads the chat template from the base GGUF.")
    else:
        _, template, stops = known
        lines.append(f'TEMPLATE """{template}"""')
        lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n"
