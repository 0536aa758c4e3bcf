"""The KServe v2 binary tensor extension (Triton's ``binary_tensor_data``, tritonclient's default), both ways:
a request with an ``Inference-Header-Content-Length`` header is that many bytes of JSON followed by the inputs'
raw data, and an answer with binary outputs is its JSON header followed by the outputs' raw data.
`BinaryTensorRoute` splits a request's body, so its handler validates the JSON part only; `binary_slices` cuts
the raw part into the inputs' data; `decode_bytes` and `encode_binary` read and write the elements (BYTES: a
4-byte little-endian length, then that many bytes; FP32: little-endian floats)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from adamix_deploy.serving.errors import ServeError
from adamix_deploy.serving.kserve import schemas as k

HEADER_LENGTH = "inference-header-content-length"  # the binary tensor extension's header


class BinaryTensorRoute(APIRoute):
    """A route that accepts the binary tensor extension: when the request has an
    ``Inference-Header-Content-Length`` header, the body is that many bytes of JSON followed by the inputs' raw
    data. The handler sees only the JSON part as its body (so validation and the schema stay those of a JSON
    request) and finds the rest on ``request.state.binary``. The body is read as JSON whatever the content
    type: protocol bodies always are, and tritonclient sends none that says so."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            if request.method == "POST":
                request = await _json_part(request, request.headers.get(HEADER_LENGTH))
            return await handler(request)

        return route


async def _json_part(request: Request, header: str | None) -> Request:
    """The request with only its JSON part as the body, declared JSON whatever the client's content type, and
    the binary rest (when the header announces one) on ``state.binary``."""
    body = await request.body()
    if header is not None and (not header.isdigit() or int(header) > len(body)):
        raise ServeError(422, f"Inference-Header-Content-Length is {header!r}; the body is {len(body)} bytes")
    size = len(body) if header is None else int(header)
    scope = dict(request.scope)  # shallow: `state` stays shared, so the metrics still see the model label
    scope["headers"] = [
        (key, value) for key, value in request.scope["headers"] if key not in (b"content-type", b"content-length")
    ] + [(b"content-type", b"application/json")]
    split = Request(scope, request.receive)
    split._body = body[:size]  # Starlette's cached body: FastAPI parses this instead of reading again
    split.state.binary = None if header is None else body[size:]
    return split


def binary_slices(tensors: list[k.RequestInput], binary: bytes | None) -> list[bytes | None]:
    """Each input's raw data from the binary part (None for JSON inputs), by their binary_data_size in order."""
    slices: list[bytes | None] = []
    offset = 0
    for tensor in tensors:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            slices.append(None)
            continue
        if binary is None:
            raise ServeError(
                422,
                f"input {tensor.name!r} has binary_data_size but the request has no "
                "Inference-Header-Content-Length header",
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ServeError(422, f"input {tensor.name!r}: binary_data_size must be a byte count, not {size!r}")
        if tensor.data is not None:
            raise ServeError(422, f"input {tensor.name!r} has both data and binary_data_size")
        if offset + size > len(binary):
            raise ServeError(422, "the binary part is shorter than the inputs' binary_data_size")
        slices.append(binary[offset : offset + size])
        offset += size
    if binary is not None and offset != len(binary):
        raise ServeError(
            422, f"the binary part is {len(binary)} bytes; the inputs' binary_data_size add up to {offset}"
        )
    return slices


def decode_bytes(raw: bytes, count: int, name: str) -> list[str]:
    """A binary BYTES tensor: each element is a 4-byte little-endian length, then that many bytes."""
    texts, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise ServeError(422, f"input {name!r}: binary data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise ServeError(422, f"input {name!r}: binary data ends inside element {len(texts)}")
        try:
            texts.append(raw[at : at + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise ServeError(422, f"input {name!r} element {len(texts)} is not UTF-8 text") from None
        at += size
    if len(texts) != count:
        raise ServeError(422, f"input {name!r} has {len(texts)} elements; its shape needs {count}")
    return texts


def encode_binary(datatype: str, values: list) -> bytes:
    if datatype == "FP32":
        return np.asarray(values, dtype="<f4").tobytes()
    encoded = [v.encode() for v in values]
    return b"".join(struct.pack("<I", len(b)) + b for b in encoded)
