"""Turning an engine's result into the response body, straight from numpy to orjson."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable

import numpy as np
import orjson

from embsvc.core.windows import Vectors
from gpu_pool import Kind, has_kind

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

# base64 payloads: little-endian, whatever the machine.
_WIRE_DTYPES = {"float32": "<f4", "float16": "<f2"}

Decode = Callable[[np.ndarray], list[str]]


def give_way() -> None:
    """Let another thread of this worker take the GIL, if one waits for it. CPython hands the GIL
    over on request only once a thread has waited 5 ms for it, and a thread that lets it go for
    a moment and takes it straight back (numpy does, in each sort or cast of more than a few
    hundred values) restarts that wait: a loop over a bulk answer's items kept a query's thread
    out for the whole loop (the H200's queries beside bulk of all kinds: p99 51 ms in the web
    workers, against 7 ms beside dense bulk; bench/gil.py measures it). A sleep of 0 lets it go
    across a system call, in which the waiting thread takes it."""
    time.sleep(0)


def _vectors(array: np.ndarray, encoding_format: str, dtype: str) -> np.ndarray | str:
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(array, dtype=_WIRE_DTYPES[dtype]).tobytes()).decode("ascii")
    return array


def sparse_tokens(result: Vectors, i: int, decode: Decode) -> dict[str, np.float32]:
    """Token text -> weight, as FlagEmbedding's ``convert_id_to_token`` builds it: ids in
    the order of their first kept position, so that of two ids that decode alike the
    later one wins."""
    ids, kept = result.sparse(i)
    input_ids, weights = result.ids[i], result.token_weights(i)
    positions = (weights > 0) & ~np.isin(input_ids, result.unused_ids)
    _, first = np.unique(input_ids[positions], return_index=True)  # same ids, same order as ``ids``
    order = np.argsort(first)
    return dict(zip(decode(ids[order]), kept[order], strict=True))


def embedding_items(result: Vectors, kinds: Kind, encoding_format: str, dtype: str = "float32",
                    decode: Decode | None = None) -> list[dict[str, object]]:
    """One ``data`` entry per input. ``dtype`` applies to base64 payloads; ``decode``
    (ids -> texts) adds ``sparse_tokens``. Dense and ColBERT entries may be views of the
    result: serialize them before it is closed."""
    items = []
    for i in range(len(result)):
        if i:
            give_way()
        item: dict[str, object] = {"object": "embedding", "index": i}
        dense = sparse = colbert = None
        if has_kind(kinds, Kind.DENSE):
            dense = _vectors(result.dense(i), encoding_format, dtype)
            item["embedding"] = dense
        item["dense_embedding"] = dense
        if has_kind(kinds, Kind.SPARSE):
            keys, weights = result.sparse(i)
            sparse = dict(zip(map(str, keys.tolist()), weights, strict=True))
        item["sparse_embedding"] = sparse
        if decode is not None and sparse is not None:
            item["sparse_tokens"] = sparse_tokens(result, i, decode)
        if has_kind(kinds, Kind.COLBERT):
            colbert = _vectors(result.colbert(i), encoding_format, dtype)
        item["colbert_embedding"] = colbert
        items.append(item)
    return items


def dumps(payload: object) -> bytes:
    return orjson.dumps(payload, option=_OPTIONS)


def dumps_list(values: Iterable[object]) -> list[bytes]:
    """A JSON array's pieces (to be joined), its values serialized one at a time. orjson holds
    the GIL for all of one call: tens of milliseconds for a batch of ColBERT matrices, in which
    no other request of this worker (a query) moves. Between values, they move (``give_way``)."""
    pieces = [b"["]
    for value in values:
        if len(pieces) > 1:
            give_way()
            pieces.append(b",")
        pieces.append(dumps(value))
    pieces.append(b"]")
    return pieces


def dumps_items(before: dict[str, object], key: str, items: list[dict[str, object]],
                after: dict[str, object]) -> bytes:
    """``{**before, key: items, **after}`` as JSON, the items serialized one at a time."""
    return b"".join((dumps(before)[:-1], b',"', key.encode(), b'":', *dumps_list(items), b",", dumps(after)[1:]))
