"""Format converters: llama.cpp GGUF LoRA adapters <-> PEFT folders."""
