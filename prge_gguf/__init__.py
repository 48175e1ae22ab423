"""prge-gguf: fine-tune quantized GGUF models with zeroth-order P-RGE through llama.cpp.

The Python API (`from prge_gguf import finetune, evaluate, generate, export, TrainConfig,
Adapter`) loads on first
use, so that `import prge_gguf` and the command line's `--help` stay light.
"""

__version__ = "0.1.0"

_API = {"finetune": "prge_gguf.api", "evaluate": "prge_gguf.api", "generate": "prge_gguf.api",
        "export": "prge_gguf.api", "Run": "prge_gguf.api",
        "TrainConfig": "prge_gguf.train_config", "Adapter": "prge_gguf.lora", "PrgeError": "prge_gguf.errors"}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    if name not in _API:
        raise AttributeError(f"module 'prge_gguf' has no attribute '{name}'")
    import importlib

    module = importlib.import_module(_API[name])
    return getattr(module, "LoraAdapter" if name == "Adapter" else name)
