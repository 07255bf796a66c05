"""BGE-M3's relevance scores of a document for a query: pure numpy, tested on its own.

The definitions are those of FlagEmbedding's ``BGEM3FlagModel.compute_score``
(its model's temperature is 1, so no scaling):

- dense: the dot product of the two L2-normalised CLS vectors;
- sparse: the dot product of the two lexical weight maps (per token id the largest
  weight, special tokens dropped), that is the sum over the ids both texts share;
- colbert: for each query row (every token but the CLS, the closing ``</s>``
  included) its best dot product with a document row, summed and divided by the
  number of query rows.

One choice differs from a batched ``compute_score``: there, a document shorter
than the longest one in its batch is padded with zero ColBERT rows, which take part
in the max, so a query row whose similarities with that document are all negative
counts 0 instead of its best (negative) similarity, and a document's score depends
on which other documents share its batch. Here the max runs over the document's
own rows only, as ``compute_score`` gives for each pair scored alone and as
``BGEM3FlagModel.colbert_score`` gives on ``encode``'s vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Vectors:
    """One text's three representations."""

    dense: np.ndarray  # [dim], L2-normalised
    lexical_ids: np.ndarray  # sorted, unique
    lexical_weights: np.ndarray  # the weight of each of lexical_ids
    colbert: np.ndarray  # [tokens - 1, dim], rows L2-normalised


def lexical_weights(ids: np.ndarray, weights: np.ndarray, unused_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (sorted) and weights as FlagEmbedding keeps them: no special
    tokens, only positive weights, and the largest weight of a repeated id."""
    keep = weights > 0
    for unused in unused_ids.tolist():  # a handful of special tokens: cheaper than np.isin
        keep &= ids != unused
    order = np.lexsort((-weights[keep], ids[keep]))  # by id, heaviest first within an id
    ids, weights = ids[keep][order], weights[keep][order]
    first = np.empty(len(ids), dtype=bool)
    first[:1] = True
    np.not_equal(ids[1:], ids[:-1], out=first[1:])
    return ids[first], weights[first]


def dense_score(query: Vectors, document: Vectors) -> float:
    return float(np.dot(query.dense, document.dense))


def sparse_score(query: Vectors, document: Vectors) -> float:
    _, q, d = np.intersect1d(query.lexical_ids, document.lexical_ids, assume_unique=True, return_indices=True)
    return float(np.dot(query.lexical_weights[q], document.lexical_weights[d]))


def colbert_score(query: Vectors, document: Vectors) -> float:
    """0 when either text has no ColBERT row (a text cut to a single token)."""
    if not len(query.colbert) or not len(document.colbert):
        return 0.0
    best = (query.colbert @ document.colbert.T).max(axis=1)
    return float(best.sum() / len(query.colbert))


def raw_scores(query: Vectors, document: Vectors) -> tuple[float, float, float]:
    """Dense, sparse and ColBERT scores of one document."""
    return dense_score(query, document), sparse_score(query, document), colbert_score(query, document)


def combine(raw: np.ndarray, weights: tuple[float, float, float]) -> np.ndarray:
    """[n, 3] dense, sparse, ColBERT scores -> [n, 5] in the order of ``protocol.SCORE_MODES``.

    The mixed modes are weighted means, as in ``compute_score``: sparse+dense is
    divided by ``w_dense + w_sparse``, colbert+sparse+dense by the sum of all three.
    """
    w_dense, w_sparse, w_colbert = weights
    dense, sparse, colbert = raw[:, 0], raw[:, 1], raw[:, 2]
    sparse_dense = _weighted_mean((dense, sparse), (w_dense, w_sparse))
    all_three = _weighted_mean((dense, sparse, colbert), (w_dense, w_sparse, w_colbert))
    return np.stack((dense, sparse, colbert, sparse_dense, all_three), axis=1).astype(np.float32)


def _weighted_mean(values: tuple[np.ndarray, ...], weights: tuple[float, ...]) -> np.ndarray:
    """Each mean's weights scaled so that its largest is 1: the same mean, but weights like 1e308
    cannot overflow, nor tiny ones (the others much larger) vanish into 0 / 0."""
    largest = max(weights)
    scaled = [w / largest for w in weights]
    total: np.ndarray = sum((v * w for v, w in zip(values, scaled, strict=True)), np.zeros_like(values[0]))
    return total / sum(scaled)
