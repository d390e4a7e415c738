"""Benchmark-suite configuration.

- On CPU, torch runs with one intra-op thread (override with FASTEBM_BENCH_THREADS): the 2-core
  development machine is shared with other processes, and two OpenMP threads on oversubscribed cores
  made training iterations 3–4× slower and much noisier than one.
- Triton variants are marked ``gpu`` and skipped cleanly without CUDA by the root conftest.py (the
  Triton interpreter on CPU is far too slow to say anything about speed; TRITON_INTERPRET is
  deliberately *not* set here).
- A plain table of every figure (speedups, FLOP ratios, paper claims, bandwidths, memory) is printed at
  the end of the run (``pytest_terminal_summary``), from ``bench._common.SUMMARY``.
"""
import os

import torch

from bench import _common

if not torch.cuda.is_available():
    torch.set_num_threads(int(os.environ.get("FASTEBM_BENCH_THREADS", "1")))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _common.SUMMARY:
        return
    tr = terminalreporter
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    tr.section(f"fastebm benchmark summary — {dev}, torch {torch.__version__}, "
               f"WRN-{_common.SIZES['depth']}-{_common.SIZES['width']}, batches "
               f"{_common.SIZES['batch_size']}/{_common.SIZES['cls_batch_size']}")
    if _common.DATA_NAME != "not loaded":  # the quality benchmark reads its own data (its section says which)
        tr.write_line(f"training data: {_common.DATA_NAME}")
    for title, sec in _common.SUMMARY.items():
        tr.write_line("")
        tr.write_line(title)
        for line in _common.format_table(sec["header"], sec["rows"]):
            tr.write_line(line)
        for note in sec["notes"]:
            tr.write_line(f"  {note}")
