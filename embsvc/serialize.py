"""Turning the engine's arrays into the response body, straight from numpy to orjson."""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np
import orjson

from gpu_pool.protocol import Kind
from gpu_pool.scoring import lexical_weights

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

# base64 payloads: little-endian, whatever the machine.
_WIRE_DTYPES = {"float32": "<f4", "float16": "<f2"}

Decode = Callable[[np.ndarray], list[str]]


def _vectors(array: np.ndarray, encoding_format: str, dtype: str) -> np.ndarray | str:
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(array, dtype=_WIRE_DTYPES[dtype]).tobytes()).decode("ascii")
    return array


def sparse_tokens(input_ids: np.ndarray, weights: np.ndarray, unused_ids: np.ndarray,
                  decode: Decode) -> dict[str, np.float32]:
    """Token text -> weight, as FlagEmbedding's ``convert_id_to_token`` builds it: ids in
    the order of their first kept position, so that of two ids that decode alike the
    later one wins."""
    ids, kept = lexical_weights(input_ids, weights, unused_ids)
    positions = (weights > 0) & ~np.isin(input_ids, unused_ids)
    _, first = np.unique(input_ids[positions], return_index=True)  # same ids, same order as ``ids``
    order = np.argsort(first)
    return dict(zip(decode(ids[order]), kept[order], strict=True))


def embedding_items(arrays: dict[str, np.ndarray], ids: list[np.ndarray], kinds: Kind,
                    encoding_format: str, unused_ids: np.ndarray, dtype: str = "float32",
                    decode: Decode | None = None) -> list[dict]:
    """One ``data`` entry per input; ``arrays`` are the views of the filled segment.

    ``dtype`` applies to base64 payloads; ``decode`` (ids -> texts) adds ``sparse_tokens``.
    """
    items = []
    token_start = colbert_start = 0
    for index, input_ids in enumerate(ids):
        n = len(input_ids)
        item: dict = {"object": "embedding", "index": index}
        dense = sparse = colbert = None
        if kinds & Kind.DENSE:
            dense = _vectors(arrays["dense"][index], encoding_format, dtype)
            item["embedding"] = dense
        item["dense_embedding"] = dense
        if kinds & Kind.SPARSE:
            position_weights = arrays["sparse"][token_start : token_start + n]
            keys, weights = lexical_weights(input_ids, position_weights, unused_ids)
            sparse = dict(zip(map(str, keys.tolist()), weights, strict=True))
        item["sparse_embedding"] = sparse
        if decode is not None and sparse is not None:
            item["sparse_tokens"] = sparse_tokens(input_ids, position_weights, unused_ids, decode)
        if kinds & Kind.COLBERT:
            colbert = _vectors(arrays["colbert"][colbert_start : colbert_start + n - 1], encoding_format, dtype)
        item["colbert_embedding"] = colbert
        items.append(item)
        token_start += n
        colbert_start += n - 1
    return items


def dumps(payload: object) -> bytes:
    return orjson.dumps(payload, option=_OPTIONS)
