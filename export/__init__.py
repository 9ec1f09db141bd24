"""Export PyTorch models to a Triton model repository (TorchScript + ONNX, parity-checked, configs generated).

Entry point: `python -m export esm2 --random-init 8M --output model_repository`. Importing this package (or
`export.esm2`) loads no torch: the client and the Triton tokenizer use `export.esm2.tokenizer` with numpy only.
"""
