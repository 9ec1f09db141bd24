"""The ESM-2 pipeline's declaration (pipeline.py) and workload (workload.py); numpy-only, importable by the client."""
