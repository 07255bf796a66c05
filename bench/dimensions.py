"""What OpenAI's ``dimensions`` costs in retrieval: the dense vector's first n components,
normalised again, against the whole vector, on a small retrieval set.

bge-m3 was not trained for shortened vectors, so this is a measurement to run on the weights an
operator serves (``--model``, a folder in bge-m3's layout), not a property of the server. The
set is made up: documents of 30 to 120 words in six languages (testkit/workload.py), and per
query 6 words drawn from one document, which is then that query's relevant one. For each n it
prints the share of queries whose relevant document is in the top 10 (recall@10, the whole
vector's beside it) and how many of the whole vector's top 10 the shortened one keeps.

    .venv/bin/python -m bench.dimensions [--model models/bge-m3-full] [--documents 400]

Without ``--model`` it builds the full-size model with random weights (testkit/model_builder.py):
its figures say how a random 1024-d vector degrades, not how bge-m3's does.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from gpu_pool.model.m3 import M3Model
from gpu_pool.wire.protocol import Kind
from testkit.model_builder import build_model
from testkit.passes import forward
from testkit.workload import texts_of_words

ROOT = Path(__file__).resolve().parents[1]
SIZES = (64, 128, 256, 512, 768, 1024)
BATCH_TOKENS = 4096


def dense(model: M3Model, tokenizer: AutoTokenizer, texts: list[str]) -> np.ndarray:
    """Normalised float32 dense vectors, in passes of about ``BATCH_TOKENS`` tokens."""
    encoded = tokenizer(texts, truncation=True, max_length=512)["input_ids"]
    out, start = [], 0
    while start < len(encoded):
        end, tokens = start, 0
        while end < len(encoded) and (end == start or tokens + len(encoded[end]) <= BATCH_TOKENS):
            tokens += len(encoded[end])
            end += 1
        batch = encoded[start:end]
        ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in batch])
        lengths = np.asarray([len(x) for x in batch], dtype=np.int32)
        vectors = forward(model, ids, lengths, Kind.DENSE, np.zeros(0, dtype=np.int64)).dense
        assert vectors is not None
        out.append(np.asarray(vectors, dtype=np.float32))
        start = end
    return np.concatenate(out)


def shortened(vectors: np.ndarray, n: int) -> np.ndarray:
    """What the server answers for ``dimensions: n``."""
    head = vectors[:, :n]
    return head / np.linalg.norm(head, axis=1, keepdims=True)


def top10(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ documents.T), axis=1)[:, :10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a folder in bge-m3's layout (default: the random full-size one)")
    parser.add_argument("--documents", type=int, default=400)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    path = args.model or build_model(ROOT / "models" / "bge-m3-full", "full")
    model = M3Model(path, torch.device("cpu"), getattr(torch, args.dtype), threads=torch.get_num_threads())
    tokenizer = AutoTokenizer.from_pretrained(str(path))

    documents = texts_of_words(args.documents, 30, 120)
    rng = random.Random(7)
    relevant = np.asarray([rng.randrange(len(documents)) for _ in range(args.queries)])
    queries = [" ".join(rng.sample(documents[d].split(), 6)) for d in relevant]
    doc_vectors, query_vectors = dense(model, tokenizer, documents), dense(model, tokenizer, queries)

    whole = top10(query_vectors, doc_vectors)
    print(f"model: {path} ({args.dtype}); {len(documents)} documents, {len(queries)} queries")
    print("| dimensions | recall@10 | of the whole vector's top 10 kept |")
    print("| --- | --- | --- |")
    for n in SIZES:
        top = top10(shortened(query_vectors, n), shortened(doc_vectors, n))
        recall = float(np.mean([r in row for r, row in zip(relevant, top, strict=True)]))
        kept = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, whole, strict=True)]))
        print(f"| {n} | {recall:.3f} | {kept:.3f} |")


if __name__ == "__main__":
    main()
