"""A small ONNX graph builder: nodes, initializers (constants shared), and the value types ONNX shape inference cannot
derive for contrib ops; used by the ESM-2 graphs (export/esm2/onnx_graph.py, onnx_attention.py, packed.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"


class GraphBuilder:
    """Nodes, initializers and the value types ONNX shape inference cannot derive (contrib op outputs)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self._names: dict[str, int] = {}
        self._constants: dict[tuple, str] = {}

    def fresh(self, stem: str) -> str:
        count = self._names.get(stem, 0)
        self._names[stem] = count + 1
        return stem if count == 0 else f"{stem}_{count}"

    def weight(self, name: str, array: np.ndarray) -> str:
        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        array = np.array(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.weight("const", array)
        return self._constants[key]

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int = 1, domain: str = "", **attributes):
        node = self.fresh(name)
        names = [node] if outputs == 1 else [f"{node}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=node, domain=domain or None, **attributes))
        return names[0] if outputs == 1 else names

    def contrib(self, op_type: str, inputs: list[str], name: str, hidden: int, **attributes) -> str:
        """A com.microsoft op whose one output is [batch, sequence, hidden] float."""
        output = self.op(op_type, inputs, name, domain=MS_DOMAIN, **attributes)
        self.value_info.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", "sequence", hidden]))
        return output

    def unsqueeze(self, tensor: str, axes: list[int], name: str) -> str:
        return self.op("Unsqueeze", [tensor, self.const(axes, np.int64)], name)
