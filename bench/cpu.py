"""The server on a CPU against the fastest CPU runtimes, in turns in one run, on the same model.

    make bench-deps                      (OpenVINO, ONNX Runtime: requirements-bench.txt)
    .venv/bin/python -m bench.cpu        (or: make bench-cpu)
    .venv/bin/python -m bench.cpu precision --model FOLDER [--against float32] [--dtype int8]
    .venv/bin/python -m bench.cpu products [--model FOLDER]
    .venv/bin/python -m bench.cpu split [--shapes 8x128 2x512 1x16]
    .venv/bin/python -m bench.cpu attention [--shapes 8x128 2x512 1x1024]
    .venv/bin/python -m bench.cpu matmul [--rows 1 16 128 1024]

``run`` (the default) builds the full-size random bge-m3 (models/bge-m3-full, git-ignored;
its compute is the real model's), converts it once for OpenVINO (models/bge-m3-full-ov) and
for ONNX Runtime, exported and quantized int8 dynamic per channel (models/bge-m3-full-onnx),
then times, in turns within each round, with the same thread count on every side:

- the server end to end (gunicorn, web workers, engine; ``DTYPE`` as given, ``auto`` first,
  then ``int8``), dense: requests of 8 texts of 128 tokens from 4 clients, of 2 texts of 512
  tokens from 2 clients, a lone 16-token query from one connection; and all three kinds on
  the 8×128 requests (base64), against its dense figure;
- OpenVINO in-process on the same shapes (its CPU defaults: bfloat16 where the CPU has
  AVX-512 BF16 or AMX, else float32), a batch per request: the 8×128 and 2×512 batches, the
  16-token query;
- ONNX Runtime int8 the same way.

It prints one JSON line per round and one of the medians and the ratios at the end.

``precision`` compares a model folder's outputs in one dtype (int8, bfloat16) against float32,
in-process through the engine's own model code: each text's dense cosine, its sparse weights'
cosine, its ColBERT rows' cosines, and the top-10 agreement of a small retrieval set (each
query's ten best documents by dense score, and by sparse, in both). Any bge-m3 folder works,
the real one included: random weights have no activation outliers, so their int8 figures are
upper bounds, and the real model's are the ones to trust.

``split`` shows where one forward's time goes, per shape: the engine's (``auto``'s dtype, dense)
by operator (torch's profiler, CPU time of each operator itself; the native kernels, called
through ctypes, are not operators: the pass's wall time less the operators' is theirs and
Python's, and the profiler charges part of theirs to the operator after each) and OpenVINO's
by node type (its ``PERF_COUNT`` counters, of a model compiled for that shape alone), after
three warm passes.

``attention`` times one layer's attention over a packed batch (bfloat16, or float32 on a CPU
without bf16): the engine's native kernel where it runs (gpu_pool/model/native), torch's fused
``scaled_dot_product_attention`` (per length, as served before it) and the two ways torch's own
operators offer instead, with each one's largest error against float32.

``matmul`` times one product of each of bge-m3's four shapes at a few row counts: oneDNN's
bfloat16 (prepacked) and fbgemm's int8 (torch's own), and the engine's native kernels where they
run (gpu_pool/model/native/products.c), bfloat16 and int8; the feed-forward's first with its GELU.

``products`` times the engine's bare forward (no HTTP, dense) with its products run by
``F.linear``, prepacked for oneDNN (float32; on a CPU with bf16 also bfloat16 as served, between
float32 activations, and as it ran before, bfloat16 throughout), and in int8 as served (on a
CPU with bf16 also with the feed-forward's second product in float32, as served elsewhere), in
turns: the candidates one by one. ``*_torch_attention``: as served, but with torch's attention
instead of the native kernel; ``onednn_bf16`` and ``int8_fbgemm``: as served before the native
products (oneDNN's bfloat16, fbgemm's int8).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench.gpu.server import embedding_requests
from testkit import httpload
from testkit.model_builder import build_model
from testkit.server import TOKEN, Server
from testkit.workload import texts, texts_of_words

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
# (texts per request or batch, tokens per text, concurrent clients, requests per measurement)
SHAPES = {"8x128": (8, 128, 4, 8), "2x512": (2, 512, 2, 4)}
QUERY_TOKENS, QUERIES = 16, 10
Forward = Callable[[np.ndarray], np.ndarray]  # ids [texts, tokens] -> dense vectors [texts, dim]


def long_texts(count: int, seed: int = 0) -> list[str]:
    """Texts longer than 512 tokens, so that ``max_length`` cuts each to exactly that many."""
    return texts_of_words(count, 700, 800, seed)


def tokenized(model: Path, shape: tuple[int, int]) -> np.ndarray:
    """ids [texts, tokens] of ``shape``, as the server's tokenizer cuts long texts to max_length."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    count, length = shape
    ids = tokenizer(long_texts(count), truncation=True, max_length=length, return_tensors="np")["input_ids"]
    assert ids.shape == shape, ids.shape
    return np.asarray(ids, dtype=np.int64)


def openvino_model(model: Path) -> Path:
    """The model converted for OpenVINO (float32 weights), once: its ``model.xml``."""
    import openvino as ov
    import torch
    from transformers import AutoModel

    xml = MODELS / f"{model.name}-ov" / "model.xml"
    if not xml.exists():
        loaded = AutoModel.from_pretrained(str(model), add_pooling_layer=False, dtype=torch.float32).eval()
        ones = torch.ones(2, 16, dtype=torch.long)
        example = {"input_ids": ones, "attention_mask": ones}
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov.convert_model(loaded, example_input=example), xml, compress_to_fp16=False)
    return xml


def openvino_forward(model: Path, threads: int) -> tuple[Forward, str]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(openvino_model(model)), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                          "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def forward(ids: np.ndarray) -> np.ndarray:
        hidden = next(iter(request.infer({"input_ids": ids, "attention_mask": np.ones_like(ids)}).values()))
        return normalized(hidden[:, 0])

    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return forward, f"OpenVINO {ov.__version__}, {precision}"


def onnx_int8_forward(model: Path, threads: int) -> tuple[Forward, str]:
    import onnxruntime as ort

    quantized = onnx_int8(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])

    def forward(ids: np.ndarray) -> np.ndarray:
        return normalized(session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][:, 0])

    return forward, f"ONNX Runtime {ort.__version__}, int8 dynamic per channel"


def onnx_int8(model: Path) -> Path:
    """The model exported to ONNX and its MatMuls quantized int8 (dynamic, per channel), once."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    folder = MODELS / f"{model.name}-onnx"
    full, quantized = folder / "model.onnx", folder / "model-int8.onnx"
    if quantized.exists():
        return quantized
    folder.mkdir(parents=True, exist_ok=True)
    if not full.exists():
        encoder = AutoModel.from_pretrained(str(model), add_pooling_layer=False, dtype=torch.float32).eval()

        class Hidden(torch.nn.Module):  # positional inputs for the exporter
            def __init__(self) -> None:
                super().__init__()
                # A submodule, so that its weights are exported as the graph's initializers (a
                # closure's become constants, which the exporter refuses while they need gradients).
                self.encoder = encoder

            def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                out: torch.Tensor = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                return out

        ids = torch.ones(2, 16, dtype=torch.long)
        axes = {0: "texts", 1: "tokens"}
        torch.onnx.export(Hidden().eval(), (ids, torch.ones_like(ids)), str(full), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes})
    quantize_dynamic(str(full), str(quantized), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], use_external_data_format=True)
    return quantized


def normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def in_process(forward: Forward, ids: np.ndarray, repeats: int) -> float:
    """Tokens per second of ``repeats`` calls on ``ids`` after one warm-up call."""
    forward(ids)
    started = time.perf_counter()
    for _ in range(repeats):
        forward(ids)
    return ids.size * repeats / (time.perf_counter() - started)


def query_ms(forward: Forward, ids: np.ndarray, repeats: int) -> float:
    """The median milliseconds of one call on ``ids``, after a warm-up."""
    forward(ids)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        forward(ids)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def bodies(shape: tuple[int, int], requests: int, extra: dict[str, Any]) -> list[dict[str, Any]]:
    count, length = shape
    pool = long_texts(count * requests, seed=1)
    return [{"input": pool[i * count:(i + 1) * count], "max_length": length, **extra} for i in range(requests)]


DENSE = {"return_dense": True, "return_sparse": False, "return_colbert": False, "encoding_format": "base64"}
ALL_KINDS = {"return_dense": True, "return_sparse": True, "return_colbert": True, "encoding_format": "base64"}


class Served:
    """The figures of one running server, measured one at a time."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.work = {
            (name, kinds): embedding_requests(server, bodies((count, length), requests, extra))
            for name, (count, length, _, requests) in SHAPES.items()
            for kinds, extra in (("dense", DENSE), ("all", ALL_KINDS)) if kinds == "dense" or name == "8x128"}
        query = {**DENSE, "input": long_texts(1, seed=2)[0], "max_length": QUERY_TOKENS}
        self.query = embedding_requests(server, [query])

    def tokens_per_s(self, shape: str, kinds: str = "dense") -> float:
        clients = SHAPES[shape][2]
        work = self.work[(shape, kinds)]
        httpload.run("127.0.0.1", self.server.port, work[:1], 1, 1, once=True)  # warm-up
        result = httpload.run("127.0.0.1", self.server.port, work, clients, 1, once=True)
        return result.figures("tokens")["tokens_per_s"]

    def query_ms(self) -> float:
        result = httpload.run("127.0.0.1", self.server.port, self.query * (QUERIES + 3), 1, 1, once=True)
        return sorted(result.latencies)[len(result.latencies) // 2] * 1000


def run(args: argparse.Namespace) -> None:
    threads = args.threads or len(os.sched_getaffinity(0))
    model = build_model(MODELS / "bge-m3-full", "full")
    references = {"openvino": openvino_forward(model, threads), "onnx_int8": onnx_int8_forward(model, threads)}
    batches = {name: tokenized(model, (count, length)) for name, (count, length, _, _) in SHAPES.items()}
    query = tokenized(model, (1, QUERY_TOKENS))
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        servers = {dtype: Server(model, Path(tmp) / f"server-{dtype}.log", API_TOKEN=TOKEN, DTYPE=dtype,
                                 MAX_QUEUE_SIZE="1000", REQUEST_TIMEOUT_S="1200") for dtype in args.dtypes}
        for server in servers.values():
            server.start(timeout=900)
        try:
            served = {dtype: Served(server) for dtype, server in servers.items()}
            for number in range(args.rounds):
                figures: dict[str, float] = {}
                for shape, ids in batches.items():
                    for dtype, one in served.items():
                        figures[f"server_{dtype}_{shape}"] = one.tokens_per_s(shape)
                    for name, (forward, _) in references.items():
                        figures[f"{name}_{shape}"] = in_process(forward, ids, SHAPES[shape][3])
                for dtype, one in served.items():
                    figures[f"server_{dtype}_8x128_all_kinds"] = one.tokens_per_s("8x128", "all")
                    figures[f"server_{dtype}_1x16_ms"] = one.query_ms()
                for name, (forward, _) in references.items():
                    figures[f"{name}_1x16_ms"] = query_ms(forward, query, QUERIES)
                rounds.append({key: round(value, 1) for key, value in figures.items()})
                print(json.dumps({"round": number, **rounds[-1]}), flush=True)
            dtypes = {dtype: requests.get(f"{server.url}/health/detailed", headers=server.auth,
                                          timeout=30).json()["model"]["dtype"] for dtype, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
    medians = {key: round(statistics.median(r[key] for r in rounds), 1) for key in rounds[0]}
    print(json.dumps({"threads": threads, "runtimes": {k: v[1] for k, v in references.items()},
                      "server_dtypes": dtypes, "medians": medians, "ratios": ratios(rounds, args.dtypes),
                      "when": time.strftime("%Y-%m-%d %H:%M:%S")}))


def ratios(rounds: list[dict[str, float]], dtypes: list[str]) -> dict[str, float]:
    """Each round's ratio, then the median over rounds: load on the machine moves both sides of a round alike."""
    pairs: dict[str, tuple[str, str, bool]] = {}  # name: (ours, theirs, lower is better)
    for dtype in dtypes:
        theirs = "onnx_int8" if dtype == "int8" else "openvino"
        for shape in SHAPES:
            pairs[f"{dtype}_{shape}_vs_{theirs}"] = (f"server_{dtype}_{shape}", f"{theirs}_{shape}", False)
        pairs[f"{dtype}_1x16_time_vs_{theirs}"] = (f"server_{dtype}_1x16_ms", f"{theirs}_1x16_ms", True)
        pairs[f"{dtype}_all_kinds_vs_dense"] = (f"server_{dtype}_8x128_all_kinds", f"server_{dtype}_8x128", False)
    return {name: round(statistics.median(r[ours] / r[theirs] for r in rounds), 3)
            for name, (ours, theirs, _) in pairs.items()}


def precision(args: argparse.Namespace) -> None:
    model = args.model or build_model(MODELS / "bge-m3-full", "full")
    print(json.dumps(compare(model, args.dtype, args.against, args.documents, args.queries, args.threads)))


def compare(model: Path, dtype: str, against: str = "float32", documents: int = 100, queries: int = 20,
            threads: int = 0) -> dict[str, Any]:
    """``model``'s outputs in ``dtype`` against ``against`` on testkit's texts: the three kinds'
    cosines and the top-10 agreement of ``queries`` over ``documents``."""
    import torch
    from transformers import AutoTokenizer

    from gpu_pool.model.device import resolve_dtype
    from gpu_pool.model.m3 import M3Model

    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    sets = texts(documents, seed=3), texts(queries, seed=4)
    outputs = {}
    for name in (against, dtype):
        engine = M3Model(model, torch.device("cpu"), resolve_dtype(name, torch.device("cpu")))
        outputs[name] = [encode(engine, tokenizer, batch) for batch in sets]
        del engine
    (ref_docs, ref_queries), (docs, qs) = outputs[against], outputs[dtype]
    report: dict[str, Any] = {"model": str(model), "dtype": dtype, "against": against,
                              "texts": documents + queries, **agreement(ref_docs + ref_queries, docs + qs)}
    for kind in ("dense", "sparse"):
        report[f"top10_agreement_{kind}"] = top_overlap(ref_queries, ref_docs, qs, docs, kind, 10)
    return report


def products(args: argparse.Namespace) -> None:
    """The engine's bare forward (dense, no HTTP) with each way of running its products, and
    OpenVINO's and ONNX Runtime int8's forward (``--references``), in turns."""
    import torch

    from gpu_pool.model import cpu_linear
    from gpu_pool.model.device import cpu_has_fast_bf16
    from gpu_pool.model.m3 import M3Model

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    model = args.model or build_model(MODELS / "bge-m3-full", "full")
    chosen = cpu_linear.products
    cpu, f32, bf16 = torch.device("cpu"), torch.float32, torch.bfloat16
    ways = {"f_linear": (f32, cpu_linear.Products("F.linear", cpu_linear.Dense, cpu_linear.Dense, f32, f32)),
            "prepacked": (f32, cpu_linear.Products("prepacked", *(cpu_linear.Prepacked.of,) * 2, f32, f32)),
            "int8": (cpu_linear.INT8, chosen(cpu, cpu_linear.INT8)),  # as served
            "int8_fbgemm": (cpu_linear.INT8, chosen(cpu, cpu_linear.INT8)._replace(prepare=cpu_linear.int8)),
            "int8_torch_attention": (cpu_linear.INT8, chosen(cpu, cpu_linear.INT8))}  # as served before
    if cpu_has_fast_bf16():  # what ``auto`` runs on such a CPU, as it ran before, and int8 as served elsewhere
        ways["prepacked_bf16"] = (bf16, chosen(cpu, bf16))  # as served: the native products and attention
        ways["prepacked_bf16_torch_attention"] = ways["prepacked_bf16"]  # as served before the native kernel
        ways["onednn_bf16"] = (bf16, cpu_linear.Products("oneDNN prepacked, bfloat16", *(cpu_linear.in_bfloat16(
            cpu_linear.prepacked),) * 2, f32, bf16))  # as served before the native products
        ways["prepacked_bf16_activations"] = (bf16, cpu_linear.Products("bfloat16 throughout",
                                                                        *(cpu_linear.Prepacked.of,) * 2, bf16, bf16))
        ways["int8_float32_down"] = (cpu_linear.INT8, cpu_linear.Products("int8, float32 down", cpu_linear.int8,
                                                                          cpu_linear.Prepacked.of, f32, f32))
    if args.ways:
        ways = {name: way for name, way in ways.items() if name in args.ways}
    engines = {}
    for name, (dtype, way) in ways.items():
        cpu_linear.products = lambda device, dtype, way=way: way
        try:
            engines[name] = M3Model(model, cpu, dtype, torch.get_num_threads())
        finally:
            cpu_linear.products = chosen
    for name in ("prepacked_bf16_torch_attention", "int8_torch_attention"):  # without the native kernel
        if name in engines:
            engines[name].encoder.native = None
    forwards: dict[str, Forward] = {name: lambda batch, e=engine: dense(e, batch) for name, engine in engines.items()}
    if args.references:
        threads = torch.get_num_threads()
        forwards |= {"openvino": openvino_forward(model, threads)[0], "onnx_int8": onnx_int8_forward(model, threads)[0]}
    shapes = {shape: tuple(int(n) for n in shape.split("x")) for shape in args.shapes}
    rounds = []
    for number in range(args.rounds):
        figures = {}
        for shape, (count, length) in shapes.items():
            ids = tokenized(model, (count, length))
            for name, forward in forwards.items():
                figures[f"{name}_{shape}_ms"] = round(query_ms(forward, ids, args.repeats), 1)
        print(json.dumps({"round": number, **figures}), flush=True)
        rounds.append(figures)
    print(json.dumps({"medians": {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}}))


def split(args: argparse.Namespace) -> None:
    """Where one forward's time goes: the engine's by operator, OpenVINO's by node type (ms)."""
    import openvino as ov
    import torch
    from torch.profiler import ProfilerActivity, profile

    from gpu_pool.model.device import cpu_has_fast_bf16
    from gpu_pool.model.m3 import M3Model

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    model = args.model or build_model(MODELS / "bge-m3-full", "full")
    engine = M3Model(model, torch.device("cpu"), torch.bfloat16 if cpu_has_fast_bf16() else torch.float32, threads)
    xml = str(openvino_model(model))
    for shape in args.shapes:
        count, length = (int(n) for n in shape.split("x"))
        ids = tokenized(model, (count, length))
        inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        # Compiled afresh for each shape: its counters average over every pass the model has run.
        compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                        "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True})
        request = compiled.create_infer_request()
        for _ in range(3):
            dense(engine, ids)
            request.infer(inputs)
        started = time.perf_counter()
        dense(engine, ids)
        wall_ms = (time.perf_counter() - started) * 1000
        with profile(activities=[ProfilerActivity.CPU]) as profiled:
            dense(engine, ids)
        # Each operator's own time as the calling thread saw it (its OpenMP threads run inside), µs to ms.
        # The native kernels (gpu_pool/model/native, through ctypes) are no torch operators: their time is
        # the pass's wall time less the operators', and the profiler charges some of it to the next operator.
        ours = {e.key: e.self_cpu_time_total / 1000 for e in profiled.key_averages()}
        ours["native kernels and Python (wall less operators)"] = max(0.0, wall_ms - sum(ours.values()))
        theirs: dict[str, float] = {}
        for node in request.profiling_info:
            theirs[node.node_type] = theirs.get(node.node_type, 0.0) + node.real_time.total_seconds() * 1000
        print(json.dumps({"shape": shape, "engine_dtype": engine.dtype_name, "engine_ms": _largest(ours),
                          "openvino_ms": _largest(theirs)}), flush=True)


def attention_ways(args: argparse.Namespace) -> None:
    """One layer's attention as served (the native kernel where it runs), and torch's ways, ms per call
    and the largest error against float32."""
    import torch
    import torch.nn.functional as F

    from gpu_pool.model import attention, native
    from gpu_pool.model.attention import Block
    from gpu_pool.model.device import cpu_has_fast_bf16

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    dtype = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    heads, width = 16, 64  # bge-m3's
    kernel, which = native.load()
    print(json.dumps({"native": which}), flush=True)

    def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scores: torch.dtype) -> torch.Tensor:
        """Softmax(q kᵀ / √d) v by batched products, the scores in ``scores``, so many heads at a
        time that their scores take at most 4 MB (the fastest of 256 KB to 16 MB measured here)."""
        q, k, v = (x.reshape(-1, *x.shape[-2:]) for x in (q, k, v))  # [texts * heads, length, width]
        out = torch.empty_like(v)
        step = max(1, (4 << 20) // (length * length * 4))
        for first in range(0, len(q), step):
            rows = slice(first, first + step)
            product = torch.bmm(q[rows].to(scores), k[rows].to(scores).transpose(1, 2)) * width ** -0.5
            torch.bmm(torch.softmax(product, -1).to(v.dtype), v[rows], out=out[rows])
        return out.view(count, heads, length, width)

    def compiled(qkv: torch.Tensor, count: int, length: int) -> torch.Tensor:
        """The engine's own kernel (gpu_pool/model/native) over the whole qkv, as one part."""
        assert kernel is not None
        context = attention.new_context(qkv)
        kernel(qkv, context, [Block(0, length, count, (0, length))], heads)
        return context.view(count, length, heads, width).transpose(1, 2)

    for shape in args.shapes:
        count, length = (int(n) for n in shape.split("x"))
        qkv = torch.randn(count * length, 3 * heads * width, generator=torch.Generator().manual_seed(0)).to(dtype)
        q, k, v = qkv.view(count, length, 3, heads, width).permute(2, 0, 3, 1, 4)  # as the engine's views
        exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        ways: dict[str, Callable[..., torch.Tensor]] = {
            "torch_fused": F.scaled_dot_product_attention,  # as served before the native kernel, and in float32
            "bmm_scores_in_dtype": lambda *qkv: explicit(*qkv, dtype),
            "bmm_scores_float32": lambda *qkv: explicit(*qkv, torch.float32)}
        if kernel is not None and kernel.takes(qkv, heads):
            ways["native"] = lambda *_, qkv=qkv, count=count, length=length: compiled(qkv, count, length)
        figures: dict[str, float] = {}
        for name, way in ways.items():
            timed = functools.partial(way, q, k, v)
            figures[f"{name}_ms"] = round(query_ms(lambda _ids, timed=timed: timed(), np.zeros(0), args.repeats), 3)
            figures[f"{name}_max_error"] = round((way(q, k, v).float() - exact).abs().max().item(), 4)
        print(json.dumps({"shape": shape, "dtype": str(dtype).removeprefix("torch."), **figures}), flush=True)


# bge-m3's products (out, in): the query, key and value projection, attention's output, the feed-forward's two
PRODUCT_SHAPES = {"qkv": (3072, 1024), "attention_out": (1024, 1024), "up": (4096, 1024), "down": (1024, 4096)}


def matmul(args: argparse.Namespace) -> None:
    """One product of each of bge-m3's shapes per way, ms per call: 8 distinct random weights in
    turn (604 MB a pass in bfloat16 cannot stay in cache; neither can these), the best of 5 loops.
    The feed-forward's first product with its GELU, as the engine runs it."""
    import torch

    from gpu_pool.model import cpu_linear, native

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    kernels, which = native.library()
    ways: dict[str, cpu_linear.Prepare] = {"onednn_bf16": cpu_linear.in_bfloat16(cpu_linear.Prepacked.of),
                                           "fbgemm_int8": cpu_linear.int8}
    if kernels is not None:
        ways |= {"native_bf16": functools.partial(native.PackedProduct, kernels),
                 "native_int8": functools.partial(native.Int8Product, kernels)}
    print(json.dumps({"native": which}), flush=True)
    generator = torch.Generator().manual_seed(0)
    for rows in args.rows:
        for name, (out, width_in) in PRODUCT_SHAPES.items():
            weights = [(torch.randn(out, width_in, generator=generator) * 0.05, torch.randn(out, generator=generator))
                       for _ in range(8)]
            x = torch.randn(rows, width_in, generator=generator)
            figures = {}
            for way, prepare in ways.items():
                products = [prepare(*weight) for weight in weights]
                loops = []
                for _ in range(6):  # the first a warm-up
                    started = time.perf_counter()
                    for product in products:
                        product.gelu(x) if name == "up" else product(x)
                    loops.append((time.perf_counter() - started) / len(products) * 1000)
                figures[f"{way}_ms"] = round(min(loops[1:]), 3)
                del products
            print(json.dumps({"rows": rows, "product": name, "shape": [out, width_in], **figures}), flush=True)


def _largest(times: dict[str, float], shown: int = 6) -> dict[str, float]:
    """The ``shown`` largest entries, the rest summed as "other", and the total, rounded."""
    ranked = sorted(times.items(), key=lambda kv: -kv[1])
    kept = {name: round(ms, 1) for name, ms in ranked[:shown]}
    return {**kept, "other": round(sum(ms for _, ms in ranked[shown:]), 1), "total": round(sum(times.values()), 1)}


def dense(engine: Any, ids: np.ndarray) -> np.ndarray:
    """One pass of the engine's model over ``ids`` [texts, tokens], packed: the dense vectors."""
    from gpu_pool.wire.protocol import Kind

    lengths = np.full(ids.shape[0], ids.shape[1])
    running = engine.start(ids.reshape(-1), lengths, Kind.DENSE, np.zeros(0, dtype=np.int64))
    while not running.step():
        pass
    out: np.ndarray = running.outputs_async().wait().dense
    return out


def encode(engine: Any, tokenizer: Any, batch: list[str]) -> list[dict[str, np.ndarray]]:
    """Each text's dense vector, sparse weights by token id, ColBERT rows, in passes of 8 texts."""
    from gpu_pool.wire import packing
    from gpu_pool.wire.protocol import Kind

    kinds = Kind.DENSE | Kind.SPARSE | Kind.COLBERT
    out: list[dict[str, np.ndarray]] = []
    for first in range(0, len(batch), 8):
        encoded = tokenizer(batch[first:first + 8], truncation=True, max_length=512)["input_ids"]
        lengths = np.array([len(ids) for ids in encoded])
        ids = np.concatenate([np.asarray(ids) for ids in encoded])
        running = engine.start(ids, lengths, kinds, np.arange(len(lengths)))
        while not running.step():
            pass
        result = running.outputs_async().wait()
        starts = packing.token_starts(lengths)
        for i, length in enumerate(lengths):
            row_ids = ids[starts[i]:starts[i] + length]
            weights = np.zeros(len(tokenizer), dtype=np.float32)
            np.maximum.at(weights, row_ids, result.sparse[starts[i]:starts[i] + length])
            weights[tokenizer.all_special_ids] = 0  # FlagEmbedding drops the special tokens' weights
            colbert_first = int(sum(lengths[:i] - 1))
            out.append({"dense": result.dense[i], "sparse": weights,
                        "colbert": result.colbert[colbert_first:colbert_first + length - 1]})
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def agreement(reference: list[dict[str, np.ndarray]], other: list[dict[str, np.ndarray]]) -> dict[str, float]:
    dense = [float(cosine(r["dense"], o["dense"])) for r, o in zip(reference, other, strict=True)]
    sparse = [float(cosine(r["sparse"], o["sparse"])) for r, o in zip(reference, other, strict=True)]
    colbert = np.concatenate([cosine(r["colbert"], o["colbert"]) for r, o in zip(reference, other, strict=True)])
    return {"dense_cosine_min": round(min(dense), 5), "dense_cosine_mean": round(statistics.mean(dense), 5),
            "sparse_cosine_min": round(min(sparse), 5), "sparse_cosine_mean": round(statistics.mean(sparse), 5),
            "colbert_cosine_min": round(float(colbert.min()), 5),
            "colbert_cosine_mean": round(float(colbert.mean()), 5)}


def top_overlap(ref_queries: list[dict[str, np.ndarray]], ref_docs: list[dict[str, np.ndarray]],
                queries: list[dict[str, np.ndarray]], docs: list[dict[str, np.ndarray]], kind: str, k: int) -> float:
    """The mean share of each query's ``k`` best documents (by ``kind``'s dot product) found in both."""
    def best(qs: list[dict[str, np.ndarray]], ds: list[dict[str, np.ndarray]]) -> np.ndarray:
        scores = np.stack([q[kind] for q in qs]) @ np.stack([d[kind] for d in ds]).T
        return np.argsort(-scores, axis=1)[:, :k]

    ours, theirs = best(queries, docs), best(ref_queries, ref_docs)
    return round(float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs, strict=True)])), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0,
                        help="the in-process runtimes' CPU threads (0: this process's cores, as the engine takes)")
    commands = parser.add_subparsers(dest="command")
    timing = commands.add_parser("run", help="the server against OpenVINO and ONNX Runtime (the default)")
    timing.add_argument("--rounds", type=int, default=3)
    timing.add_argument("--dtypes", nargs="+", default=["auto", "int8"], help="the servers' DTYPEs")
    check = commands.add_parser("precision", help="one dtype's outputs against another's on a model folder")
    check.add_argument("--model", type=Path, default=None, help="a bge-m3 folder (default: the full random one)")
    check.add_argument("--dtype", default="int8")
    check.add_argument("--against", default="float32")
    check.add_argument("--documents", type=int, default=100)
    check.add_argument("--queries", type=int, default=20)
    forward = commands.add_parser("products", help="the bare forward with each way of running the products")
    forward.add_argument("--model", type=Path, default=None, help="a bge-m3 folder (default: the full random one)")
    forward.add_argument("--rounds", type=int, default=3)
    forward.add_argument("--repeats", type=int, default=3, help="timed calls per shape and way, after a warm-up")
    forward.add_argument("--shapes", nargs="+", default=["8x128", "2x512", "1x16"], help="TEXTSxTOKENS")
    forward.add_argument("--references", action="store_true", help="OpenVINO and ONNX Runtime int8 too")
    forward.add_argument("--ways", nargs="+", default=None, help="only these ways (default: all)")
    where = commands.add_parser("split", help="where one forward's time goes, the engine's and OpenVINO's")
    where.add_argument("--model", type=Path, default=None, help="a bge-m3 folder (default: the full random one)")
    where.add_argument("--shapes", nargs="+", default=["8x128", "2x512", "1x16"], help="TEXTSxTOKENS")
    layer = commands.add_parser("attention", help="one layer's attention: as served, and torch's other ways")
    layer.add_argument("--shapes", nargs="+", default=["8x128", "2x512", "1x1024"], help="TEXTSxTOKENS")
    layer.add_argument("--repeats", type=int, default=20)
    product = commands.add_parser("matmul", help="one product of each of bge-m3's shapes, per way of running it")
    product.add_argument("--rows", nargs="+", type=int, default=[1, 16, 128, 1024])
    args = parser.parse_args()
    if args.command == "matmul":
        matmul(args)
    elif args.command == "split":
        split(args)
    elif args.command == "attention":
        attention_ways(args)
    elif args.command == "precision":
        precision(args)
    elif args.command == "products":
        products(args)
    else:
        for name, default in (("rounds", 3), ("dtypes", ["auto", "int8"])):
            args.__dict__.setdefault(name, default)
        run(args)


if __name__ == "__main__":
    main()
