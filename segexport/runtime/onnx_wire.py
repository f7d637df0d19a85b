"""External-data references in an ONNX file, read from its protobuf wire format (no `onnx` needed).

An ONNX file may keep tensors in other files (`data_location: EXTERNAL`), which ONNX
Runtime opens by relative path without any checksum. segexport never writes external
data (its graphs are far below protobuf's 2 GB), so an artifact that has some is refused
before it reaches a loader; the runtime must see this without the toolchain's `onnx`.
"""

from __future__ import annotations

from collections.abc import Iterator

# Which fields of each message hold sub-messages that can contain tensors (onnx.proto
# field numbers): ModelProto, GraphProto, NodeProto, AttributeProto, FunctionProto,
# TrainingInfoProto, SparseTensorProto. TensorProto itself is read by `_tensor_location`.
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_TENSOR_EXTERNAL_DATA = 13  # repeated StringStringEntryProto {key = 1, value = 2}
_TENSOR_DATA_LOCATION = 14  # enum DataLocation {DEFAULT = 0, EXTERNAL = 1}


class MalformedProtobuf(ValueError):
    """The bytes are not a well-formed protobuf message (ONNX Runtime will say more)."""


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise MalformedProtobuf("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int, memoryview | int]]:
    """(field number, wire type, value) of one message; length-delimited values as views."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
            yield number, wire, value
        elif wire == 2:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise MalformedProtobuf("truncated field")
            yield number, wire, data[position : position + length]
            position += length
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
        else:
            raise MalformedProtobuf(f"unsupported wire type {wire}")
    if position != len(data):
        raise MalformedProtobuf("truncated message")


def _tensor_location(tensor: memoryview) -> str | None:
    """The external file a TensorProto points to, '' if external without a location, else None."""
    external = False
    location = ""
    for number, wire, value in _fields(tensor):
        if number == _TENSOR_DATA_LOCATION and wire == 0 and value == 1:
            external = True
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            assert isinstance(value, memoryview)
            entry = {n: bytes(v) for n, w, v in _fields(value) if w == 2 and isinstance(v, memoryview)}
            external = True
            if entry.get(1) == b"location":
                location = entry.get(2, b"").decode("utf-8", "replace")
    return location if external else None


def external_data_files(model: bytes) -> list[str]:
    """The external data locations a serialized ModelProto refers to (empty: self-contained).

    Raises MalformedProtobuf when the bytes are not a protobuf message.
    """
    found: list[str] = []
    stack: list[tuple[str, memoryview]] = [("model", memoryview(model))]
    while stack:
        kind, message = stack.pop()
        if kind == "tensor":
            location = _tensor_location(message)
            if location is not None:
                found.append(location or "(no location)")
            continue
        children = _CHILDREN[kind]
        for number, wire, value in _fields(message):
            if wire == 2 and number in children:
                assert isinstance(value, memoryview)
                stack.append((children[number], value))
    return sorted(set(found))
