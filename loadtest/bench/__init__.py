"""One-run benchmark on one machine: does batching on Triton win? Same model, same length mix, same load generator.

    python -m loadtest.bench                 # full run (needs a quiet machine: minutes)
    python -m loadtest.bench --quick         # CI smoke: tiny mix, short windows

What is measured (groups a-d) is in `scenarios.py`; `engines.py` holds the raw in-process engines (a), `load.py` the
closed-loop load generator that drives b, c and d (threads, one connection each, one sequence per request),
`report.py` the results, ratios and the reports/bench.md, reports/bench.json and reports/bench_*.png it writes.
Server overhead = client latency at concurrency 1 minus the compute time Triton's statistics API reports for that
request.
"""
