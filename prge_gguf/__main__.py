"""`python -m prge_gguf` runs the CLI."""

from prge_gguf.cli import main

raise SystemExit(main())
