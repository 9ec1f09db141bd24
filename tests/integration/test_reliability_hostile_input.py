"""Hostile input against the ESM-2 repository: >= 500 malformed requests over raw HTTP and raw gRPC.

Each must get a 4xx (HTTP) or a client-error gRPC status (INVALID_ARGUMENT, NOT_FOUND, ...) with a message — never
a 5xx/INTERNAL, never a hang — the server stays ready, and a known-good request returns bit-identical output before
and after the barrage. Requests are built by hand (http.client, raw protobuf) so that nothing "fixes" them first.
"""

from __future__ import annotations

import http.client
import json
import struct
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

MAX_BATCH = 64
GOOD_SEQUENCE = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
# Statuses that name a client mistake. Anything else (5xx, INTERNAL, UNKNOWN, UNAVAILABLE, ...) is a finding.
CLIENT_ERROR_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # message larger than the gRPC limit
    grpc.StatusCode.UNIMPLEMENTED,
}

# Findings, pinned so that anything new stands out (docs/reliability.md, "Hostile input"). Each is still answered
# with a message and leaves the server whole; a fix turning one into a 4xx keeps this test green.
# 1. Triton 24.10's HTTP front end answers JSON it cannot parse (wrong JSON types, missing members, bad syntax) with
#    500 and a parser message instead of 400.
TRITON_JSON_PARSE_500 = ("Unable to parse", "failed to parse the request JSON", "failed to get request params")
# 2. Requests Triton accepts although they are odd: zero or huge batch dims on a BYTES input with one element,
#    surplus raw contents, a model name cut at a NUL byte, version "1.0" read as 1; negative token ids are valid
#    ONNX Gather indices (counted from the end of the table); the fused-attention ONNX graph computes an empty
#    [1, 0] token sequence (an all-zero EMBEDDING: the mean over no residues).
TRITON_LENIENT = {
    "grpc:shape_zero_batch",
    "grpc:shape_huge",
    "http:shape_huge_dim",
    "http:shape_overflow_dim",
    "grpc:raw_two_raw_for_one_input",
    "grpc:unknown_model_'esm2\\x00'",
    "grpc:unknown_version_1.0",
    "grpc:esm2_onnx_ids_negative",
    "http:esm2_onnx_ids_negative",
    "grpc:esm2_onnx_empty_sequence",
    "http:esm2_onnx_empty_sequence",
}
# 4. The repository API with model control "none" answers 503 ("explicit model load / unload is not allowed"): a
#    status clients treat as "retry later" for a request that can never succeed on this server.
# 3. Token ids the raw engines cannot run (our Python-based backends report the engine's error as INTERNAL, as the
#    native backends do): mismatched INPUT_IDS/ATTENTION_MASK lengths, empty sequences, ids outside the vocabulary
#    in TorchScript. The ensemble `esm2` never sends these (its tokenizer builds the ids).
ENGINE_ERRORS_AS_500 = {
    f"{protocol}:{model}_{name}"
    for protocol in ("http", "grpc")
    for model in ("esm2_onnx", "esm2_torchscript")
    for name in ("length_mismatch", "empty_sequence", "ids_out_of_vocab", "ids_negative", "ids_int64_max")
}


@dataclass(frozen=True)
class HttpCase:
    name: str
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    method: str = "POST"


@dataclass(frozen=True)
class GrpcCase:
    name: str
    request: service_pb2.ModelInferRequest


# -- HTTP corpus -------------------------------------------------------------------------------------------------------


def _json_case(name: str, inputs: object, model: str = "esm2", version: str = "", **extra: object) -> HttpCase:
    path = (
        f"/v2/models/{quote(model, safe='%/')}"
        + (f"/versions/{quote(version, safe='%')}" if version else "")
        + "/infer"
    )
    return HttpCase(name, path, json.dumps({"inputs": inputs, **extra}).encode())


def _sequence_input(data: list, shape: list | None = None, datatype: str = "BYTES", name: str = "SEQUENCE") -> dict:
    return {"name": name, "shape": shape if shape is not None else [len(data), 1], "datatype": datatype, "data": data}


def _bytes_element(value: bytes) -> bytes:
    return struct.pack("<I", len(value)) + value


def _binary_case(
    name: str,
    payload: bytes,
    binary_size: int | None = None,
    header_length: str | None = None,
    shape: list | None = None,
    datatype: str = "BYTES",
    model: str = "esm2",
    input_name: str = "SEQUENCE",
) -> HttpCase:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": shape or [1, 1],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(payload) if binary_size is None else binary_size},
                }
            ]
        }
    ).encode()
    length = str(len(header)) if header_length is None else header_length
    headers = (("Content-Type", "application/octet-stream"), ("Inference-Header-Content-Length", length))
    return HttpCase(name, f"/v2/models/{model}/infer", header + payload, headers)


def _bad_sequences() -> Iterator[tuple[str, object]]:
    yield "empty", ""
    yield "whitespace", "   \t  "
    yield "too_long_1023", "A" * 1023
    yield "too_long_5000", "M" * 5000
    yield "huge_200k", "K" * 200_000
    for char in "0123456789!@#$%^&*()-_=+[]{};:'\",.<>/?\\|`~ ":
        yield f"invalid_residue_{ord(char)}", f"MKT{char}AYIAK"
        yield f"invalid_residue_alone_{ord(char)}", char * 3
    for char in "ΩéßЖ中😀\u200b\x00\x7f":
        yield f"non_ascii_{ord(char)}", f"MKTA{char}YIAK"
    yield "special_token", "<cls>MKTAYIAK<eos>"
    yield "lowercase_with_digit", "mktayiak1"
    yield "number_not_string", 12345
    yield "null", None
    yield "object", {"seq": "MKT"}
    yield "boolean", True


def build_http_corpus() -> list[HttpCase]:
    cases: list[HttpCase] = []
    for name, sequence in _bad_sequences():
        cases.append(_json_case(f"seq_{name}", [_sequence_input([sequence])]))
        cases.append(_json_case(f"seq_{name}_in_batch", [_sequence_input([GOOD_SEQUENCE, sequence, GOOD_SEQUENCE])]))
    numbers = {"FP32": [1.5], "FP16": [1.0], "FP64": [2.0], "INT64": [1], "INT32": [1], "INT8": [1], "UINT8": [1]}
    numbers |= {"BOOL": [True], "UINT64": [1], "BF16": [1.0], "STRING": ["MKT"], "bytes": ["MKT"], "": ["MKT"]}
    for datatype, data in numbers.items():
        cases.append(_json_case(f"dtype_{datatype or 'empty'}", [_sequence_input(data, [1, 1], datatype)]))
    shapes = {
        "rank1": [1],
        "rank3": [1, 1, 1],
        "shape_data_mismatch": [2, 1],
        "zero_batch": [0, 1],
        "zero_dim": [1, 0],
        "negative": [-1, 1],
        "second_dim_2": [1, 2],
        "huge_dim": [2**40, 1],
        "overflow_dim": [2**63, 1],
        "string_dim": ["1", "1"],
        "float_dim": [1.5, 1],
        "empty_shape": [],
    }
    for name, shape in shapes.items():
        cases.append(_json_case(f"shape_{name}", [_sequence_input([GOOD_SEQUENCE], shape)]))
    cases += [
        _json_case(f"oversize_batch_{size}", [_sequence_input([GOOD_SEQUENCE] * size)]) for size in (MAX_BATCH + 1, 100)
    ]
    cases += [
        _json_case("missing_input", []),
        _json_case("wrong_input_name", [_sequence_input([GOOD_SEQUENCE], name="SEQ")]),
        _json_case("lowercase_input_name", [_sequence_input([GOOD_SEQUENCE], name="sequence")]),
        _json_case("extra_input", [_sequence_input([GOOD_SEQUENCE]), _sequence_input([GOOD_SEQUENCE], name="EXTRA")]),
        _json_case("duplicate_input", [_sequence_input([GOOD_SEQUENCE]), _sequence_input([GOOD_SEQUENCE])]),
        _json_case("unknown_output", [_sequence_input([GOOD_SEQUENCE])], outputs=[{"name": "NOPE"}]),
        _json_case("inputs_not_list", {"name": "SEQUENCE"}),
        _json_case("inputs_null", None),
        _json_case("input_is_string", ["SEQUENCE"]),
        _json_case("missing_datatype", [{"name": "SEQUENCE", "shape": [1, 1], "data": [GOOD_SEQUENCE]}]),
        _json_case("missing_shape", [{"name": "SEQUENCE", "datatype": "BYTES", "data": [GOOD_SEQUENCE]}]),
        _json_case("missing_data", [{"name": "SEQUENCE", "datatype": "BYTES", "shape": [1, 1]}]),
        _json_case("missing_name", [{"datatype": "BYTES", "shape": [1, 1], "data": [GOOD_SEQUENCE]}]),
        _json_case("data_is_string", [{"name": "SEQUENCE", "datatype": "BYTES", "shape": [1, 1], "data": "MKT"}]),
        _json_case("data_too_short", [_sequence_input([GOOD_SEQUENCE], [3, 1])]),
        _json_case("data_too_long", [_sequence_input([GOOD_SEQUENCE] * 3, [1, 1])]),
        _json_case("bad_parameters", [_sequence_input([GOOD_SEQUENCE])], parameters="nope"),
        _json_case("negative_timeout", [_sequence_input([GOOD_SEQUENCE])], parameters={"timeout": -5}),
        _json_case("string_priority", [_sequence_input([GOOD_SEQUENCE])], parameters={"priority": "high"}),
    ]
    for model in ("nope", "ESM2", "esm2 ", "..%2Fesm2", "esm2%00", "%FF%FE", "a" * 2000, "esm2/../esm2_onnx"):
        cases.append(_json_case(f"unknown_model_{model[:12]}", [_sequence_input([GOOD_SEQUENCE])], model=model))
    for version in ("2", "0", "-1", "abc", "1.0", "99999999999999999999", "%20"):
        cases.append(_json_case(f"unknown_version_{version[:8]}", [_sequence_input([GOOD_SEQUENCE])], version=version))
    garbage = [
        b"",
        b"{",
        b"not json",
        b"[]",
        b"null",
        b"42",
        b'"inputs"',
        b"\xff\xfe\xfd",
        b'{"inputs": [',
        b'{"inputs": [{"name": "SEQUENCE", "shape": [1, 1], "datatype": "BYTES", "data": ["MKT"]}]',
        b"\x00" * 64,
        bytes(range(256)),
        b'{"inputs": [{"name": "SEQUENCE", "shape": [1, 1], "datatype": "BYTES", "data": ["\\ud800"]}]}',
        b'{"inputs": [], "inputs": [1]}',
        json.dumps({"inputs": [_sequence_input([GOOD_SEQUENCE])]}).encode()[:-7],
    ]
    cases += [HttpCase(f"garbage_{i}", "/v2/models/esm2/infer", body) for i, body in enumerate(garbage)]
    cases.append(HttpCase("deep_nesting", "/v2/models/esm2/infer", b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"))
    good = _bytes_element(GOOD_SEQUENCE.encode())
    cases += [
        _binary_case("bin_header_length_too_big", good, header_length="100000"),
        _binary_case("bin_header_length_negative", good, header_length="-1"),
        _binary_case("bin_header_length_text", good, header_length="abc"),
        _binary_case("bin_header_length_zero", good, header_length="0"),
        _binary_case("bin_header_length_short", good, header_length="10"),
        _binary_case("bin_header_length_huge", good, header_length="99999999999999999999"),
        _binary_case("bin_size_bigger_than_payload", good, binary_size=len(good) + 100),
        _binary_case("bin_size_smaller_than_payload", good, binary_size=len(good) - 3),
        _binary_case("bin_size_zero", good, binary_size=0),
        _binary_case("bin_size_negative", good, binary_size=-4),
        _binary_case("bin_truncated_length_prefix", good[:2]),
        _binary_case("bin_truncated_payload", good[:-5]),
        _binary_case("bin_length_prefix_too_big", struct.pack("<I", 10_000) + b"MKT"),
        _binary_case("bin_length_prefix_max", struct.pack("<I", 2**32 - 1) + b"MKT"),
        _binary_case("bin_empty_payload", b""),
        _binary_case("bin_two_elements_for_shape_1", good + good),
        _binary_case("bin_fp32_for_bytes", np.ones(1, np.float32).tobytes(), datatype="FP32"),
    ]
    for i, blob in enumerate((b"\xff\xfe\xfa", b"MKT\x80AYI", b"\xc3\x28", b"\xed\xa0\x80", b"MK\x00TA", b"\x00")):
        cases.append(_binary_case(f"bin_non_utf8_{i}", _bytes_element(blob)))
    for i, batch in enumerate((2, 3, MAX_BATCH + 1)):
        cases.append(_binary_case(f"bin_shape_mismatch_{i}", good, shape=[batch, 1]))
    cases += _raw_model_http_cases()
    cases += [
        HttpCase("get_on_infer", "/v2/models/esm2/infer", b"", method="GET"),
        HttpCase("put_on_infer", "/v2/models/esm2/infer", b"{}", method="PUT"),
        HttpCase("unknown_path", "/v2/nothing/here", b"{}"),
        HttpCase("unknown_model_config", "/v2/models/nope/config", b"", method="GET"),
        HttpCase("repository_load_in_mode_none", "/v2/repository/models/esm2/load", b"{}"),
    ]
    return cases


def _raw_model_http_cases() -> list[HttpCase]:
    """Token-id requests straight to the engines (our Python-based backends): dtype, shape and value tricks."""
    cases = []
    for model, ids_name, mask_name in (
        ("esm2_onnx", "INPUT_IDS", "ATTENTION_MASK"),
        ("esm2_torchscript", "INPUT_IDS__0", "ATTENTION_MASK__1"),
    ):

        def ids_case(
            name: str,
            ids: list,
            mask: list,
            ids_type: str = "INT64",
            mask_type: str = "INT64",
            names=(model, ids_name, mask_name),
        ) -> HttpCase:
            model, ids_name, mask_name = names
            inputs = [
                {"name": ids_name, "shape": [1, len(ids)], "datatype": ids_type, "data": ids},
                {"name": mask_name, "shape": [1, len(mask)], "datatype": mask_type, "data": mask},
            ]
            return _json_case(f"{model}_{name}", inputs, model=model)

        ids = [0, 20, 15, 11, 2]
        mask = [1, 1, 1, 1, 1]
        cases += [
            ids_case("ids_out_of_vocab", [0, 20, 999_999, 11, 2], mask),
            ids_case("ids_negative", [0, 20, -7, 11, 2], mask),
            ids_case("ids_int64_max", [0, 2**63 - 1, 2], [1, 1, 1]),
            ids_case("length_mismatch", ids, [1, 1, 1]),
            ids_case("ids_fp32", [0.0, 20.0, 2.0], [1, 1, 1], ids_type="FP32"),
            ids_case("mask_int32", ids, mask, mask_type="INT32"),
            ids_case("empty_sequence", [], []),
            _json_case(
                f"{model}_missing_mask",
                [{"name": ids_name, "shape": [1, len(ids)], "datatype": "INT64", "data": ids}],
                model=model,
            ),
        ]
    return cases


# -- gRPC corpus -------------------------------------------------------------------------------------------------------


def _grpc_request(
    model: str = "esm2",
    version: str = "",
    inputs: list[tuple[str, str, list[int]]] | None = None,
    raw: list[bytes] | None = None,
    outputs: list[str] | None = None,
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape in inputs if inputs is not None else [("SEQUENCE", "BYTES", [1, 1])]:
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.extend(shape)
    for content in raw if raw is not None else [_bytes_element(GOOD_SEQUENCE.encode())]:
        request.raw_input_contents.append(content)
    for name in outputs or []:
        request.outputs.add().name = name
    return request


def build_grpc_corpus() -> list[GrpcCase]:
    cases: list[GrpcCase] = []
    for name, sequence in _bad_sequences():
        if isinstance(sequence, str):
            encoded = sequence.encode("utf-8")
            cases.append(GrpcCase(f"seq_{name}", _grpc_request(raw=[_bytes_element(encoded)])))
            batch = b"".join(_bytes_element(s) for s in (GOOD_SEQUENCE.encode(), encoded, GOOD_SEQUENCE.encode()))
            cases.append(
                GrpcCase(f"seq_{name}_in_batch", _grpc_request(inputs=[("SEQUENCE", "BYTES", [3, 1])], raw=[batch]))
            )
    for i, blob in enumerate(
        (b"\xff\xfe\xfa", b"MKT\x80AYI", b"\xc3\x28", b"\xed\xa0\x80", b"MK\x00TA", b"\x00", b"\x80" * 50)
    ):
        cases.append(GrpcCase(f"non_utf8_{i}", _grpc_request(raw=[_bytes_element(blob)])))
    cases += [
        GrpcCase(
            f"dtype_{datatype or 'empty'}", _grpc_request(inputs=[("SEQUENCE", datatype, [1, 1])], raw=[b"\0" * 8])
        )
        for datatype in ("FP32", "INT64", "INT32", "BOOL", "UINT8", "FP16", "FP64", "BF16", "STRING", "", "bytes")
    ]
    for name, shape in {
        "rank1": [1],
        "rank3": [1, 1, 1],
        "batch_2_one_element": [2, 1],
        "zero_batch": [0, 1],
        "zero_dim": [1, 0],
        "negative": [-1, 1],
        "second_dim_2": [1, 2],
        "huge": [2**40, 1],
        "empty": [],
        "oversize_batch": [MAX_BATCH + 1, 1],
    }.items():
        cases.append(GrpcCase(f"shape_{name}", _grpc_request(inputs=[("SEQUENCE", "BYTES", shape)])))
    many = b"".join(_bytes_element(GOOD_SEQUENCE.encode()) for _ in range(MAX_BATCH + 1))
    cases.append(
        GrpcCase(
            "oversize_batch_full_data", _grpc_request(inputs=[("SEQUENCE", "BYTES", [MAX_BATCH + 1, 1])], raw=[many])
        )
    )
    good = _bytes_element(GOOD_SEQUENCE.encode())
    raw_tricks = {
        "no_raw": [],
        "two_raw_for_one_input": [good, good],
        "truncated_prefix": [good[:2]],
        "truncated_payload": [good[:-4]],
        "prefix_too_big": [struct.pack("<I", 10_000) + b"MKT"],
        "prefix_max": [struct.pack("<I", 2**32 - 1) + b"MKT"],
        "empty_raw": [b""],
        "two_elements_for_shape_1": [good + good],
        "garbage": [bytes(range(256))],
    }
    for name, raw in raw_tricks.items():
        cases.append(GrpcCase(f"raw_{name}", _grpc_request(raw=raw)))
    cases += [
        GrpcCase("missing_input", _grpc_request(inputs=[], raw=[])),
        GrpcCase("wrong_input_name", _grpc_request(inputs=[("SEQ", "BYTES", [1, 1])])),
        GrpcCase(
            "extra_input",
            _grpc_request(inputs=[("SEQUENCE", "BYTES", [1, 1]), ("EXTRA", "BYTES", [1, 1])], raw=[good, good]),
        ),
        GrpcCase("duplicate_input", _grpc_request(inputs=[("SEQUENCE", "BYTES", [1, 1])] * 2, raw=[good, good])),
        GrpcCase("unknown_output", _grpc_request(outputs=["NOPE"])),
        GrpcCase("empty_model_name", _grpc_request(model="")),
    ]
    for model in ("nope", "ESM2", "esm2 ", "../esm2", "esm2\x00", "a" * 2000, "esm2_tokenizer/../esm2"):
        cases.append(GrpcCase(f"unknown_model_{model[:12]!r}", _grpc_request(model=model)))
    for version in ("2", "0", "-1", "abc", "1.0", "99999999999999999999"):
        cases.append(GrpcCase(f"unknown_version_{version[:8]}", _grpc_request(version=version)))
    for model, ids_name, mask_name in (
        ("esm2_onnx", "INPUT_IDS", "ATTENTION_MASK"),
        ("esm2_torchscript", "INPUT_IDS__0", "ATTENTION_MASK__1"),
    ):

        def ids_request(
            ids: list[int], mask: list[int], ids_type: str = "INT64", names=(model, ids_name, mask_name)
        ) -> service_pb2.ModelInferRequest:
            model, ids_name, mask_name = names
            ids_bytes = (
                np.asarray(ids, np.int64).tobytes() if ids_type == "INT64" else np.asarray(ids, np.float32).tobytes()
            )
            return _grpc_request(
                model,
                inputs=[(ids_name, ids_type, [1, len(ids)]), (mask_name, "INT64", [1, len(mask)])],
                raw=[ids_bytes, np.asarray(mask, np.int64).tobytes()],
            )

        cases += [
            GrpcCase(f"{model}_ids_out_of_vocab", ids_request([0, 20, 999_999, 2], [1, 1, 1, 1])),
            GrpcCase(f"{model}_ids_negative", ids_request([0, -3, 2], [1, 1, 1])),
            GrpcCase(f"{model}_length_mismatch", ids_request([0, 20, 15, 2], [1, 1])),
            GrpcCase(f"{model}_ids_fp32", ids_request([0, 20, 2], [1, 1, 1], ids_type="FP32")),
            GrpcCase(
                f"{model}_raw_size_mismatch",
                _grpc_request(
                    model,
                    inputs=[(ids_name, "INT64", [1, 4]), (mask_name, "INT64", [1, 4])],
                    raw=[b"\x00" * 7, b"\x00" * 32],
                ),
            ),
        ]
    return cases


# -- the test ----------------------------------------------------------------------------------------------------------


def _http_send(base: str, case: HttpCase) -> tuple[int, str]:
    host, port = base.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest(case.method, case.path, skip_accept_encoding=True)
        for key, value in case.headers:
            connection.putheader(key, value)
        connection.putheader("Content-Length", str(len(case.body)))
        connection.endheaders(case.body)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def _known_good(base: str, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> tuple[bytes, bytes]:
    body = json.dumps(
        {
            "inputs": [_sequence_input([GOOD_SEQUENCE, "GSHMLE"])],
            "outputs": [{"name": "EMBEDDING", "parameters": {"binary_data": True}}],
        }
    ).encode()
    status, _ = _http_send(base, HttpCase("good", "/v2/models/esm2/infer", body))
    assert status == 200
    host, port = base.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", "/v2/models/esm2/infer", body, {"Content-Type": "application/json"})
        http_bytes = connection.getresponse().read()
    finally:
        connection.close()
    raw = b"".join(_bytes_element(s.encode()) for s in (GOOD_SEQUENCE, "GSHMLE"))
    answer = stub.ModelInfer(
        _grpc_request(inputs=[("SEQUENCE", "BYTES", [2, 1])], raw=[raw], outputs=["EMBEDDING"]), timeout=60
    )
    return http_bytes[-2 * 320 * 4 :], answer.raw_output_contents[0]


def _judge(key: str, status: object, text: str) -> str:
    """'client error' (the goal), a pinned finding, or 'UNEXPECTED'."""
    if not text.strip() and status not in (200, grpc.StatusCode.OK):
        return "UNEXPECTED"  # an error must say what is wrong
    if isinstance(status, int) and 400 <= status < 500 or status in CLIENT_ERROR_GRPC:
        return "client error"
    if key in TRITON_LENIENT and status in (200, grpc.StatusCode.OK):
        return "finding: accepted by Triton"
    if status == 500 and key.startswith("http:") and any(marker in text for marker in TRITON_JSON_PARSE_500):
        return "finding: Triton JSON parse error as 500"
    if key in ENGINE_ERRORS_AS_500 and status in (500, grpc.StatusCode.INTERNAL):
        return "finding: engine error as 500"
    if key == "http:repository_load_in_mode_none" and status == 503 and "not allowed" in text:
        return "finding: disabled repository API as 503"
    return "UNEXPECTED"


def test_corpus_is_large_and_varied():
    http_cases, grpc_cases = build_http_corpus(), build_grpc_corpus()
    assert len(http_cases) + len(grpc_cases) >= 500, (len(http_cases), len(grpc_cases))
    assert len({c.name for c in http_cases}) == len(http_cases)
    assert len({c.name for c in grpc_cases}) == len(grpc_cases)


def test_malformed_requests_get_client_errors_and_the_server_stays_whole(esm2_server):
    http_cases, grpc_cases = build_http_corpus(), build_grpc_corpus()
    channel = grpc.insecure_channel(esm2_server.grpc_url, options=[("grpc.max_receive_message_length", 2**30)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        before = _known_good(esm2_server.http_url, stub)

        def send_http(case: HttpCase) -> tuple[str, object, str]:
            status, text = _http_send(esm2_server.http_url, case)
            return case.name, status, text

        def send_grpc(case: GrpcCase) -> tuple[str, object, str]:
            try:
                stub.ModelInfer(case.request, timeout=60)
            except grpc.RpcError as error:
                return case.name, error.code(), error.details() or ""
            return case.name, grpc.StatusCode.OK, ""

        with ThreadPoolExecutor(max_workers=4) as pool:
            http_answers = list(pool.map(send_http, http_cases))
            grpc_answers = list(pool.map(send_grpc, grpc_cases))
        after = _known_good(esm2_server.http_url, stub)
    finally:
        channel.close()
    verdicts = Counter()
    unexpected = []
    for protocol, answers in (("http", http_answers), ("grpc", grpc_answers)):
        for name, status, text in answers:
            verdict = _judge(f"{protocol}:{name}", status, text)
            verdicts[verdict] += 1
            if verdict == "UNEXPECTED":
                unexpected.append((protocol, name, status, text[:200]))
    print(f"\nhostile corpus: {len(http_cases)} HTTP + {len(grpc_cases)} gRPC requests")
    print("HTTP statuses:", dict(Counter(s for _, s, _ in http_answers)))
    print("gRPC statuses:", dict(Counter(s.name for _, s, _ in grpc_answers)))
    print("verdicts:", dict(verdicts))
    assert unexpected == [], unexpected
    assert esm2_server.is_ready()
    assert before == after  # bit-identical known-good output (HTTP binary and gRPC raw bytes)
