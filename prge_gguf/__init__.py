"""prge-gguf: fine-tune quantized GGUF models with zeroth-order P-RGE through llama.cpp."""

__version__ = "0.1.0"
