"""fastebm benchmark suite (see bench/RESULTS.md): ``python -m pytest bench/ --benchmark-only``."""
