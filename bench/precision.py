"""How close bfloat16 vectors stay to float32 ones: the engine's model run in both, same texts.

    .venv/bin/python -m bench.precision MODEL_FOLDER [--texts N]     (one JSON line)

Figures: the smallest dense cosine; the smallest cosine between a text's sparse
weights (one per token) in the two types, and their largest absolute difference;
the smallest and mean cosine of ColBERT rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from embsvc.core.tokenizer import TextTokenizer, truncate
from gpu_pool.model.m3 import M3Model, Outputs
from gpu_pool.wire.protocol import Kind
from testkit.workload import texts

ALL = Kind.DENSE | Kind.SPARSE | Kind.COLBERT


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def compare(model: Path, count: int, max_length: int = 512) -> dict[str, float]:
    ids = sorted((truncate(x, max_length) for x in TextTokenizer(model).encode(texts(count))), key=len, reverse=True)
    flat, lengths = np.concatenate(ids), np.array([len(x) for x in ids])
    out: dict[torch.dtype, Outputs] = {}
    for dtype in (torch.float32, torch.bfloat16):
        out[dtype] = M3Model(model, torch.device("cpu"), dtype, torch.get_num_threads()).forward(
            flat, lengths, ALL, np.arange(len(ids)))
    full, half = out[torch.float32], out[torch.bfloat16]
    ends = np.cumsum(lengths)
    sparse = [_cosine(f, h) for f, h in zip(np.split(full.sparse, ends[:-1]), np.split(half.sparse, ends[:-1]),
                                            strict=True)]
    colbert = _cosine(full.colbert, half.colbert)
    return {"texts": len(ids), "dense_cosine_min": float(_cosine(full.dense, half.dense).min()),
            "sparse_cosine_min": float(min(sparse)),
            "sparse_max_abs_diff": float(np.abs(full.sparse - half.sparse).max()),
            "sparse_max_weight": float(full.sparse.max()),
            "colbert_cosine_min": float(colbert.min()), "colbert_cosine_mean": float(colbert.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--texts", type=int, default=48)
    args = parser.parse_args()
    print(json.dumps({k: round(v, 5) for k, v in compare(args.model, args.texts).items()}))


if __name__ == "__main__":
    main()
