"""Python-based Triton backends named like the native ones (`onnxruntime`, `pytorch`) plus their shared base.

Each `<name>/model.py` is copied into `<backend-dir>/<name>/` by the launcher; Triton uses it when
`libtriton_<name>.so` is absent, so the production repository (`platform: "onnxruntime_onnx"` + `model.onnx`,
`platform: "pytorch_libtorch"` + `model.pt`) loads unchanged.
"""
