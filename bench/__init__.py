"""fastebm benchmark suite (see bench/RESULTS.md): run with ``PYTHONPATH=. python -m pytest bench/ --benchmark-only``."""
