"""Export PyTorch models to a Triton model repository (ONNX + TorchScript, parity-checked, configs generated).

One core for every model: `signature` infers names, dtypes and dynamic axes from sample inputs (numpy only),
`network` runs the exporters (`onnx_export`, `torchscript`) and the parity check (`parity`), `model_config` builds the
configs as protobuf messages. On top of it, `generic` serves any module (`python -m export torch --factory
MODULE:CALLABLE ...`, loaded by `factory`) and `esm2` is the ESM-2 pipeline (`python -m export esm2 ...`, its
tokenizer, BLS and ensemble models around the exported network). Imports only `tritonfleet.contract` from this
project; importing the package and building configs loads no torch.
"""
