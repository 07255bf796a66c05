"""The device check's parts that run the model in-process, each in a process of its own.

    python -m bench.gpu_parts PART --device cuda:0|cpu --model FOLDER --work DIR [--quick]

PART is one of: env, peak, parity, engine, flag. Each prints one JSON line (its figures).
bench/gpu_check.py runs them one after another with a time budget each, so that one
failure or hang still leaves the others' figures; the texts come from DIR/texts.json,
written once by gpu_check.py.
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
from gpu_pool.model.m3 import M3Model, Outputs
from gpu_pool.wire.protocol import Kind

ALL = Kind.DENSE | Kind.SPARSE | Kind.COLBERT
PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "safetensors", "huggingface_hub", "FlagEmbedding",
            "datasets", "falcon", "gunicorn", "orjson", "python-dotenv", "prometheus-client")
# Mixed scripts and lengths, as tests/integration/test_vectors_match_flagembedding.py uses.
PARAGRAPH = ("Retrieval augmented generation combines search with language models. "
             "Поиск по документам объединяет плотные и разреженные векторы. "
             "检索增强生成结合了搜索与语言模型。 البحث الهجين يجمع بين المتجهات الكثيفة والمتفرقة. ")
PARITY_TEXTS = [
    "hello", "What is BGE-M3?", "Привет, как дела? Это тест многоязычной модели.",
    "北京是中国的首都，也是一座历史悠久的城市。", "مرحبا بالعالم، هذا اختبار للنموذج",
    "emoji 🚀🔥 and numbers 12345 and CamelCaseWords",
    "Ein längerer deutscher Satz über Einbettungen, Vektoren und die Suche in großen Dokumentensammlungen.",
    PARAGRAPH * 3, PARAGRAPH * 40, PARAGRAPH * 200,  # past 512 tokens; past 8,192
]
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
    """The device's half-precision matrix-product peak, measured here (as bench/peak.py does on a CPU)."""
    device = torch.device(args.device)
    # A CPU has no fast float16 products (torch emulates them): there, bfloat16 and float32.
    size, dtypes = (8192, (torch.bfloat16, torch.float16)) if device.type == "cuda" else (
        1024, (torch.bfloat16, torch.float32))
    return {f"{str(dtype).removeprefix('torch.')}_tflops": round(_matmul_flops(device, dtype, size) / 1e12, 3)
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
    bulk = _bulk_texts(args, 64 if args.quick else 256)
    reference = _forward_sorted(full, [truncate(x, 512) for x in tokenizer.encode(bulk)])
    del full
    for dtype in (torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        half = M3Model(model, device, dtype)
        ids = [truncate(x, 512) for x in tokenizer.encode(bulk)]
        out[f"{name}_vs_float32"] = {"attention": half.attention.path,
                                     **_closeness(_forward_sorted(half, ids), reference)}
        if half.attention.path == attention.VARLEN:
            per_length = M3Model(model, device, dtype, attention_path=attention.PER_LENGTH)
            out[f"{name}_varlen_vs_per_length"] = _closeness(_forward_sorted(half, ids),
                                                             _forward_sorted(per_length, ids))
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
    out = model.forward(np.concatenate([ids[i] for i in order]), lengths, ALL, np.arange(len(ids)))
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
        ref_dense = expected["dense_vecs"][i]
        cosine = float(item["dense"] @ ref_dense / np.linalg.norm(item["dense"]) / np.linalg.norm(ref_dense))
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


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    result: np.ndarray = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    return result


def _closeness(got: Outputs, want: Outputs) -> dict[str, float]:
    assert got.dense is not None and got.sparse is not None and got.colbert is not None
    assert want.dense is not None and want.sparse is not None and want.colbert is not None
    colbert = _cosine(got.colbert, want.colbert)
    return {"dense_cosine_min": round(float(_cosine(got.dense, want.dense).min()), 6),
            "sparse_max_abs_diff": round(float(np.abs(got.sparse - want.sparse).max()), 5),
            "colbert_cosine_min": round(float(colbert.min()), 6),
            "colbert_cosine_mean": round(float(colbert.mean()), 6)}


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
    model.forward(*batches[0], kinds, colbert if kinds == Kind.DENSE else np.arange(len(batches[0][1])))  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    started = time.perf_counter()
    for flat, lengths in batches:
        model.forward(flat, lengths, kinds, colbert if kinds == Kind.DENSE else np.arange(len(lengths)))
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
    tokens = sum(len(x) for x in TextTokenizer(Path(args.model)).encode(texts))
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
    texts: list[str] = json.loads((Path(args.work) / "texts.json").read_text())["bulk"]["texts"]
    return (texts * (count // len(texts) + 1))[:count]


PARTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "env": env, "peak": peak, "parity": parity, "engine": engine, "flag": flag}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--model", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budgets", type=lambda s: tuple(int(x) for x in s.split(",")), default=())
    args = parser.parse_args()
    started = time.perf_counter()
    figures = PARTS[args.part](args)
    print(json.dumps({**figures, "part_seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
