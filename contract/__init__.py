"""The contract every stage shares: tensor specs and data types, model configs, the ESM-2 sequence rules.

Needs only numpy, protobuf and tritonclient, so the thin client can depend on it. `esm2_tokens` needs only numpy:
the served python models run a copy of it. `engines` opens exported files in-process (`open_engine`); it imports
onnxruntime or torch only when an engine is opened.
"""
