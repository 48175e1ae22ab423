"""Write one random-weight GGUF (prge_gguf.synthetic): a llama of real shapes for SPEED benchmarks,
a tiny model of another architecture, or the metadata-only vocabulary file the GPU machine uses.

    python scripts/synthetic_gguf.py --preset smollm2-135m --type Q4_1 --out /tmp/s135.gguf
    python scripts/synthetic_gguf.py --tiny phi3 --type Q8_0 --out /tmp/phi3.gguf
    python scripts/synthetic_gguf.py --export-vocab carry-gpu/vocab.gguf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prge_gguf.synthetic import ARCHS, FTYPES, NOTE, PRESETS, export_vocab, write_synthetic, write_tiny  # noqa: E402


def main() -> None:
    """CLI: one synthetic model, or the metadata-only vocabulary file."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smollm2-135m")
    ap.add_argument("--tiny", choices=sorted(ARCHS), help="instead: a tiny model of this architecture")
    ap.add_argument("--type", default="Q4_1", choices=FTYPES, help="llama.cpp file type (default Q4_1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=Path, help="GGUF to copy the tokenizer from (default: shipped SmolLM2)")
    ap.add_argument("--threads", type=int, help="quantization threads (default: all cores)")
    ap.add_argument("--out", type=Path, help="output .gguf")
    ap.add_argument("--export-vocab", type=Path, metavar="FILE",
                    help="instead: write the tokenizer metadata of --vocab (or the shipped model) to FILE")
    args = ap.parse_args()
    if args.export_vocab:
        out = export_vocab(args.export_vocab, args.vocab)
        print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB of tokenizer metadata")
        return
    if not args.out:
        ap.error("--out is required")
    if args.tiny:
        out, what = write_tiny(args.out, args.tiny, args.type, args.seed, args.threads), f"tiny {args.tiny}"
    else:
        out = write_synthetic(args.out, args.preset, args.type, args.seed, args.vocab, args.threads)
        what = args.preset
    print(f"{out}: {what} {args.type}, {out.stat().st_size / 2**20:.1f} MiB ({NOTE})")


if __name__ == "__main__":
    main()
