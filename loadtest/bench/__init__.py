"""One-run benchmark on one machine, engine variants as rows (the repository's precision, the shipped defaults, and
the other precisions the export offers, exported with the same device plan), two questions kept apart:

1. serving efficiency: served / raw at the same engine file and the same thread budget (target P1);
2. engine gain: each variant's raw engine / eager fp32 PyTorch (SDPA) at the same threads on the same sequences;

plus the README's entry point against a hand-written FastAPI + eager service (P2) and the per-request server-side
overhead at concurrency 1 (P3).

    tritonfleet bench --model-repository model_repository   # full run (needs a quiet machine: ~20 min)
    tritonfleet bench --quick                                 # CI smoke: exports, tiny mix, short windows

What is measured (groups a-d) is in `scenarios.py`; `engines.py` holds the raw in-process engines and the two ways of
spending the cores on them (a; loadtest/cpu_plan.py takes its ceiling from there), `load.py` the closed-loop load
generator that drives b, c and d (threads, one connection each, one sequence per request), `report.py` the results,
the figures against their targets and the reports/bench.md, reports/bench.json and reports/bench_*.png it writes.
"""
