"""The device check's parts that run the model in-process, each in a process of its own.

    python -m bench.gpu.parts PART --device cuda:0|cpu [--model FOLDER] [--work DIR] [--texts N] [--quick]

PART is one of: env, peak, parity, engine, flag, precision. Each prints one JSON line (its
figures). bench/gpu/check.py runs them one after another with a time budget each, so that
one failure or hang still leaves the others' figures; the texts come from DIR/texts.json,
written once by check.py. bench.run runs three on the CPU, each with the machine to itself:
``peak`` (the bfloat16 matrix-product peak), ``flag`` (FlagEmbedding's encode on ``--texts N``
of testkit's texts, where no DIR is given) and ``precision`` (how close bfloat16 vectors stay
to float32 ones on the same texts: ``compare``).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.metadata
import json
import os
import platform
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embsvc.core.tokenizer import TextTokenizer, truncate
from gpu_pool.m3math import lexical_weights
from gpu_pool.model import attention
from gpu_pool.model.m3 import M3Model
from gpu_pool.model.port import Outputs
from gpu_pool.wire.protocol import Kind
from testkit.passes import forward
from testkit.workload import MIXED_TEXTS, PARAGRAPH
from testkit.workload import texts as testkit_texts

ALL = Kind.DENSE | Kind.SPARSE | Kind.COLBERT
PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "safetensors", "huggingface_hub", "FlagEmbedding",
            "datasets", "falcon", "gunicorn", "orjson", "python-dotenv", "prometheus-client")
PARITY_TEXTS = [*MIXED_TEXTS, PARAGRAPH * 200]  # and one past 8,192 tokens
# The CPU tests' tolerances (tests/integration/test_vectors_match_flagembedding.py).
DENSE_COSINE_MIN, SPARSE_DIFF_MAX, COLBERT_DIFF_MAX = 0.99999, 1e-4, 1e-4


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- env ---------------------------------------------------------------------------


def env(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    out: dict[str, Any] = {"python": platform.python_version(), "cores": len(os.sched_getaffinity(0)),
                           "torch_cuda": torch.version.cuda, "packages": _versions(),
                           "attention_kernels": [name for name, _ in attention.kernels()]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                "gpu_memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
                "flash_attention_available": torch.backends.cuda.is_flash_attention_available(),
                "cudnn": torch.backends.cudnn.version()}
        for dtype in (torch.float16, torch.bfloat16):
            choice, _ = attention.select(device, dtype)
            name = str(dtype).removeprefix("torch.")
            out[f"attention_{name}"] = f"{choice.path} {choice.kernel_name}: {choice.reason}"
    return out


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


# -- peak --------------------------------------------------------------------------


def peak(args: argparse.Namespace) -> dict[str, Any]:
    """The device's half-precision matrix-product peak, measured here (on a CPU with every core)."""
    device = torch.device(args.device)
    # A CPU has no fast float16 products (torch emulates them): there, bfloat16 and float32. One
    # without bfloat16 instructions multiplies bfloat16 at under a GFLOP/s: --quick keeps it short.
    size, dtypes = (8192, (torch.bfloat16, torch.float16)) if device.type == "cuda" else (
        512 if args.quick else 4096, (torch.bfloat16, torch.float32))
    repeats = 3 if args.quick and device.type == "cpu" else 10
    if device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    return {f"{str(dtype).removeprefix('torch.')}_tflops": round(_matmul_flops(device, dtype, size, repeats) / 1e12, 4)
            for dtype in dtypes} | {"size": size}


def _matmul_flops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


# -- parity ------------------------------------------------------------------------


def parity(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's model in float32 against FlagEmbedding in float32 on the same device; then
    float16 and bfloat16 against float32; on CUDA, varlen attention against per-length."""
    device, model = torch.device(args.device), Path(args.model)
    tokenizer = TextTokenizer(model)
    lengths = (8192, 512, 16) if not args.quick else (8192, 16)
    full = M3Model(model, device, torch.float32)
    out: dict[str, Any] = {"attention_float32": full.attention.path}
    out["flagembedding"] = _against_flagembedding(full, model, tokenizer, device, lengths)
    ids = [truncate(x, 512) for x in tokenizer.encode(_bulk_texts(args, 64 if args.quick else 256))]
    reference = _forward_sorted(full, ids)
    del full
    for dtype in (torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        half = M3Model(model, device, dtype)
        out[f"{name}_vs_float32"] = {"attention": half.attention.path,
                                     **_closeness(_forward_sorted(half, ids), reference, ids)}
        if half.attention.path == attention.VARLEN:
            per_length = M3Model(model, device, dtype, attention_path=attention.PER_LENGTH)
            out[f"{name}_varlen_vs_per_length"] = _closeness(_forward_sorted(half, ids),
                                                             _forward_sorted(per_length, ids), ids)
            del per_length
        del half
    out["float16_dense_cosine_ok"] = out["float16_vs_float32"]["dense_cosine_min"] >= 0.999
    out["bfloat16_dense_cosine_ok"] = out["bfloat16_vs_float32"]["dense_cosine_min"] >= 0.999
    return out


def _against_flagembedding(model: M3Model, folder: Path, tokenizer: TextTokenizer, device: torch.device,
                           lengths: tuple[int, ...]) -> dict[str, Any]:
    flag_model, note = flag_model_class()
    reference = flag_model(str(folder), use_fp16=False, devices=str(device))
    worst: dict[str, float] = {"dense_cosine_min": 1.0, "sparse_max_abs_diff": 0.0, "sparse_keys_differing": 0,
                               "colbert_max_abs_diff": 0.0}
    for max_length in lengths:
        expected = reference.encode(PARITY_TEXTS, max_length=max_length, batch_size=4, return_dense=True,
                                    return_sparse=True, return_colbert_vecs=True)
        ids = [truncate(x, max_length) for x in tokenizer.encode(PARITY_TEXTS)]
        batched = _items(model, tokenizer, ids, _forward_sorted(model, ids))
        single = [_items(model, tokenizer, [x], _forward_sorted(model, [x]))[0] for x in ids]
        for items in (batched, single):
            _worst(worst, items, expected)
    worst["import"] = note
    worst["within_cpu_tolerances"] = (worst["dense_cosine_min"] >= DENSE_COSINE_MIN
                                      and worst["sparse_max_abs_diff"] <= SPARSE_DIFF_MAX
                                      and worst["colbert_max_abs_diff"] <= COLBERT_DIFF_MAX)
    return worst


def _forward_sorted(model: M3Model, ids: list[np.ndarray]) -> Outputs:
    """One pass, longest first as the planner packs them; the outputs back in the texts' order."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    lengths = np.array([len(ids[i]) for i in order], dtype=np.int64)
    out = forward(model, np.concatenate([ids[i] for i in order]), lengths, ALL, np.arange(len(ids)))
    return _reorder(out, lengths, order)


def _reorder(out: Outputs, lengths: np.ndarray, order: list[int]) -> Outputs:
    assert out.dense is not None and out.sparse is not None and out.colbert is not None
    back = np.argsort(order)
    token_ends, row_ends = np.cumsum(lengths), np.cumsum(lengths - 1)
    sparse = np.split(out.sparse, token_ends[:-1])
    colbert = np.split(out.colbert, row_ends[:-1])
    return Outputs(out.dense[back], np.concatenate([sparse[i] for i in back]),
                   np.concatenate([colbert[i] for i in back]))


def _items(model: M3Model, tokenizer: TextTokenizer, ids: list[np.ndarray], out: Outputs) -> list[dict[str, Any]]:
    """Per text: the dense vector, the lexical weights as FlagEmbedding keeps them, the ColBERT rows."""
    assert out.dense is not None and out.sparse is not None and out.colbert is not None
    lengths = np.array([len(x) for x in ids])
    sparse = np.split(out.sparse, np.cumsum(lengths)[:-1])
    colbert = np.split(out.colbert, np.cumsum(lengths - 1)[:-1])
    items = []
    for i, text_ids in enumerate(ids):
        keys, weights = lexical_weights(text_ids, sparse[i], tokenizer.unused_ids)
        items.append({"dense": out.dense[i], "sparse": dict(zip(map(str, keys.tolist()), weights.tolist(),
                                                                  strict=True)), "colbert": colbert[i]})
    return items


def _worst(worst: dict[str, float], items: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    for i, item in enumerate(items):
        cosine = float(cosine_rows(item["dense"], expected["dense_vecs"][i]))
        worst["dense_cosine_min"] = min(worst["dense_cosine_min"], cosine)
        ref_sparse = {k: float(v) for k, v in expected["lexical_weights"][i].items()}
        keys = set(ref_sparse) | set(item["sparse"])
        worst["sparse_keys_differing"] += len(set(ref_sparse) ^ set(item["sparse"]))
        diff = max((abs(item["sparse"].get(k, 0.0) - ref_sparse.get(k, 0.0)) for k in keys), default=0.0)
        worst["sparse_max_abs_diff"] = max(worst["sparse_max_abs_diff"], diff)
        ref_colbert = expected["colbert_vecs"][i]
        diff = float(np.abs(item["colbert"] - ref_colbert).max()) if item["colbert"].shape == ref_colbert.shape \
            else float("inf")
        worst["colbert_max_abs_diff"] = max(worst["colbert_max_abs_diff"], diff)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine of each row of ``a`` with the same row of ``b`` (of two vectors: one number)."""
    result: np.ndarray = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    return result


def _closeness(got: Outputs, want: Outputs, ids: list[np.ndarray]) -> dict[str, float]:
    """How close ``got`` is to ``want`` for the texts ``ids``: the smallest dense cosine; the smallest
    cosine of a text's sparse weights (one per token) and their largest absolute difference; the
    smallest and mean cosine of ColBERT rows."""
    assert got.dense is not None and got.sparse is not None and got.colbert is not None
    assert want.dense is not None and want.sparse is not None and want.colbert is not None
    ends = np.cumsum([len(x) for x in ids])[:-1]
    sparse = [cosine_rows(g, w) for g, w in zip(np.split(got.sparse, ends), np.split(want.sparse, ends), strict=True)]
    colbert = cosine_rows(got.colbert, want.colbert)
    return {"dense_cosine_min": round(float(cosine_rows(got.dense, want.dense).min()), 6),
            "sparse_cosine_min": round(float(min(sparse)), 6),
            "sparse_max_abs_diff": round(float(np.abs(got.sparse - want.sparse).max()), 5),
            "colbert_cosine_min": round(float(colbert.min()), 6),
            "colbert_cosine_mean": round(float(colbert.mean()), 6)}


# -- precision ---------------------------------------------------------------------


def compare(model: Path, count: int, max_length: int = 512, device: str = "cpu") -> dict[str, float]:
    """The engine's model in bfloat16 against float32 on ``count`` of testkit's texts."""
    ids = [truncate(x, max_length) for x in TextTokenizer(model).encode(testkit_texts(count))]
    out = {dtype: _forward_sorted(M3Model(model, torch.device(device), dtype, torch.get_num_threads()), ids)
           for dtype in (torch.float32, torch.bfloat16)}
    reference = out[torch.float32]
    assert reference.sparse is not None
    return {"texts": len(ids), **_closeness(out[torch.bfloat16], reference, ids),
            "sparse_max_weight": round(float(reference.sparse.max()), 5)}


def precision(args: argparse.Namespace) -> dict[str, Any]:
    return compare(Path(args.model), args.texts or 48, device=args.device)


# -- engine ------------------------------------------------------------------------


def engine(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's model alone (no HTTP) on the bulk texts, in passes packed as the planner packs
    them, at several token budgets: tokens/s, dense only and all three kinds, and memory."""
    device, model_path = torch.device(args.device), Path(args.model)
    model = M3Model(model_path, device, _dtype(device), max(1, len(os.sched_getaffinity(0)) - 1))
    ids = TextTokenizer(model_path).encode(_bulk_texts(args, 512 if args.quick else 2048))
    budgets = args.budgets or ((8192, 32768) if args.quick else (8192, 16384, 32768, 65536))
    out: dict[str, Any] = {"dtype": model.dtype_name, "attention": model.attention.path,
                           "flops_per_token": model.flops_per_token, "budgets": {}}
    for budget in budgets:
        out["budgets"][str(budget)] = {name: _throughput(model, ids, budget, kinds, device)
                                       for name, kinds in (("dense", Kind.DENSE), ("all_kinds", ALL))}
    if model.attention.path == attention.VARLEN:
        per_length = M3Model(model_path, device, model.dtype, model.threads, attention_path=attention.PER_LENGTH)
        out["per_length_attention"] = _throughput(per_length, ids, budgets[-1] // 2, Kind.DENSE, device)
    return out


def _dtype(device: torch.device) -> torch.dtype:
    from gpu_pool.model.device import resolve_dtype

    return resolve_dtype("auto", device)


def passes(lengths: list[int], budget: int) -> list[list[int]]:
    """Text indices per pass: longest first, each pass under ``budget`` tokens (a longer text alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = [[]]
    used = 0
    for i in order:
        if out[-1] and used + lengths[i] > budget:
            out.append([])
            used = 0
        out[-1].append(i)
        used += lengths[i]
    return out


def _throughput(model: M3Model, ids: list[np.ndarray], budget: int, kinds: Kind,
                device: torch.device) -> dict[str, float]:
    batches = []
    for members in passes([len(x) for x in ids], budget):
        lengths = np.array([len(ids[i]) for i in members], dtype=np.int64)
        batches.append((np.concatenate([ids[i] for i in members]), lengths))
    colbert = np.arange(0)
    forward(model, *batches[0], kinds, colbert if kinds == Kind.DENSE else np.arange(len(batches[0][1])))  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    started = time.perf_counter()
    for flat, lengths in batches:
        forward(model, flat, lengths, kinds, colbert if kinds == Kind.DENSE else np.arange(len(lengths)))
    seconds = time.perf_counter() - started
    tokens = sum(len(flat) for flat, _ in batches)
    result = {"passes": len(batches), "tokens": tokens, "seconds": round(seconds, 3),
              "tokens_per_s": round(tokens / seconds, 1)}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


# -- flag --------------------------------------------------------------------------


def flag(args: argparse.Namespace) -> dict[str, Any]:
    """FlagEmbedding's BGEM3FlagModel.encode in-process on the bulk texts, its defaults for the
    device (float16 on CUDA, float32 on a CPU; batch 256, max_length 512 here as in the requests)."""
    device = torch.device(args.device)
    texts = _bulk_texts(args, 512 if args.quick else 1024)
    tokens = sum(len(truncate(x, 512)) for x in TextTokenizer(Path(args.model)).encode(texts))
    flag_model, note = flag_model_class()
    model = flag_model(args.model, use_fp16=device.type == "cuda", devices=str(device))
    model.encode(texts[:8], max_length=512)  # warm-up
    out: dict[str, Any] = {"texts": len(texts), "tokens": tokens, "use_fp16": device.type == "cuda", "import": note}
    for name, kinds in (("dense", {}), ("all_kinds", {"return_sparse": True, "return_colbert_vecs": True})):
        sync(device)
        started = time.perf_counter()
        model.encode(texts, max_length=512, return_dense=True, **kinds)
        seconds = time.perf_counter() - started
        out[name] = {"seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
    return out


def flag_model_class() -> tuple[Any, str]:
    """FlagEmbedding's BGEM3FlagModel, and how it was imported. FlagEmbedding imports ``datasets``
    for its fine-tuning code only; where that ``datasets`` does not import (against another
    machine's pyarrow, say), an empty stand-in lets inference, which never uses it, go on."""
    try:
        from FlagEmbedding import BGEM3FlagModel
    except Exception as exc:  # noqa: BLE001 - any import failure: try once more without datasets
        error = f"{type(exc).__name__}: {exc}"
        for name in [m for m in sys.modules if m.split(".")[0] in ("FlagEmbedding", "datasets")]:
            del sys.modules[name]
        stand_in = types.ModuleType("datasets")
        stand_in.__spec__ = importlib.machinery.ModuleSpec("datasets", None)  # transformers looks for one
        stand_in.__getattr__ = lambda name: type(name, (), {})  # type: ignore[method-assign]  # annotations name its classes
        sys.modules["datasets"] = stand_in
        from FlagEmbedding import BGEM3FlagModel

        return BGEM3FlagModel, f"datasets stood in for ({error})"
    return BGEM3FlagModel, "plain"


def _bulk_texts(args: argparse.Namespace, count: int) -> list[str]:
    """``count`` (or ``--texts``) of the check's bulk texts, or of testkit's where no --work is given."""
    count = args.texts or count
    if not args.work:
        return testkit_texts(count)
    texts: list[str] = json.loads((Path(args.work) / "texts.json").read_text())["bulk"]["texts"]
    return (texts * (count // len(texts) + 1))[:count]


PARTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "env": env, "peak": peak, "parity": parity, "engine": engine, "flag": flag, "precision": precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--model", help="a bge-m3 folder (every part but env and peak)")
    parser.add_argument("--work", help="where check.py wrote texts.json")
    parser.add_argument("--texts", type=int, default=0, help="how many texts (default: the part's own)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budgets", type=lambda s: tuple(int(x) for x in s.split(",")), default=())
    args = parser.parse_args()
    started = time.perf_counter()
    figures = PARTS[args.part](args)
    print(json.dumps({**figures, "part_seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
