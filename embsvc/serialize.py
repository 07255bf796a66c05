"""Turning the engine's arrays into the response body, straight from numpy to orjson."""

from __future__ import annotations

import base64

import numpy as np
import orjson

from gpu_pool.protocol import Kind

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def sparse_weights(ids: np.ndarray, weights: np.ndarray, unused_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and weights as FlagEmbedding keeps them: no special tokens,
    only positive weights, and the largest weight of a repeated id."""
    keep = (weights > 0) & ~np.isin(ids, unused_ids)
    ids, weights = ids[keep], weights[keep]
    order = np.lexsort((-weights, ids))  # by id, heaviest first within an id
    unique_ids, first = np.unique(ids[order], return_index=True)
    return unique_ids, weights[order][first]


def _vectors(array: np.ndarray, encoding_format: str) -> np.ndarray | str:
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")
    return array


def embedding_items(arrays: dict[str, np.ndarray], ids: list[np.ndarray], kinds: Kind,
                    encoding_format: str, unused_ids: np.ndarray) -> list[dict]:
    """One ``data`` entry per input; ``arrays`` are the views of the filled segment."""
    items = []
    token_start = colbert_start = 0
    for index, input_ids in enumerate(ids):
        n = len(input_ids)
        item: dict = {"object": "embedding", "index": index}
        dense = sparse = colbert = None
        if kinds & Kind.DENSE:
            dense = _vectors(arrays["dense"][index], encoding_format)
            item["embedding"] = dense
        if kinds & Kind.SPARSE:
            keys, weights = sparse_weights(input_ids, arrays["sparse"][token_start : token_start + n], unused_ids)
            sparse = dict(zip(map(str, keys.tolist()), weights, strict=True))
        if kinds & Kind.COLBERT:
            colbert = _vectors(arrays["colbert"][colbert_start : colbert_start + n - 1], encoding_format)
        item.update(dense_embedding=dense, sparse_embedding=sparse, colbert_embedding=colbert)
        items.append(item)
        token_start += n
        colbert_start += n - 1
    return items


def dumps(payload: object) -> bytes:
    return orjson.dumps(payload, option=_OPTIONS)
