"""The device check: what the GPU path does, measured in one run, as one JSON line.

    python -m bench.gpu.check [--device cuda:0] [--model full|tiny|FOLDER] [--quick] [--out DIR] [--budget-s S]
                              [--parts env,build,engine,...]

bench/gpu/check.sh runs it on the GPU machine after installing the wheels it carries; here,
``--device cpu --model tiny --quick`` runs every part end to end on the CPU. Parts, in
order, each in a process of its own under a time limit, so that a failure or a hang in one
still leaves the others' figures (a part that finds too little time left is skipped, and
the JSON says so). The whole check takes at most ``--budget-s`` (300 s; quick 180 s), so that
on the GPU machine its start, a run and a rerun fit in 15 minutes:

  env        torch, CUDA, the GPU, the packages, which attention kernel each half type gets
  gpu_tests  the tests marked ``gpu`` (tests/unit/test_attention.py, test_transfer.py,
             tests/integration/test_model.py): the CUDA paths' correctness, first
  build      the random bge-m3 folder (full: the real architecture), built on the machine
  peak       the device's bfloat16 and float16 matrix-product peak (8192³ on a GPU)
  server     gunicorn + engine under concurrent HTTP clients: bulk dense, bulk all kinds in
             base64 float16, short queries from 64 connections, a lone query, the lone query
             beside the bulk load; the engine's busy share and the web workers' CPU
  bare_app   the short queries on a bare Falcon app with the same gunicorn settings
  flag       FlagEmbedding's encode in-process on the same bulk texts (its defaults)
  parity     the engine's model against FlagEmbedding in float32 on the device, all three
             kinds, mixed lengths and scripts, single and batched; float16/bfloat16 against
             float32; varlen against per-length attention
  engine     the engine's model alone on the bulk texts at 8,192 to 65,536 tokens a pass
  two_engines  the short queries and the lone query with two engines on the one device
             (``DEVICE=cuda:0,cuda:0``), where time is left

The JSON (printed last, and written to OUT/gpu-check-DATE-GPU.json, ready for bench/results/,
after every part: a check stopped by a timeout leaves every part it finished there) holds
every part's figures, the GPU path's targets with met/not met, and the share of the
measured matrix peak that the server's bulk throughput is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from gpu_pool.model.flops import flops_per_token as encoder_flops_per_token
from testkit.model_builder import build_model
from testkit.workload import texts_of_tokens

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Part:
    name: str
    limit_s: float  # its own limit, full check
    quick_limit_s: float


# Most important first: whether the CUDA paths are right, then the headline figures, then the
# checks that confirm choices.
PARTS = (Part("env", 60, 60), Part("gpu_tests", 120, 90), Part("build", 150, 150), Part("peak", 40, 30),
         Part("server", 180, 110), Part("bare_app", 60, 40), Part("flag", 120, 60), Part("parity", 150, 90),
         Part("engine", 120, 60), Part("two_engines", 90, 50))
BUDGET_S, QUICK_BUDGET_S = 300, 180  # the whole check's default time
MIN_PART_S = 20  # a part that cannot have this long is skipped
# The test files with tests marked ``gpu``.
GPU_TESTS = ("tests/unit/test_attention.py", "tests/unit/test_transfer.py", "tests/integration/test_model.py")


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.budget_s
        self.work = Path(args.work or Path(args.out) / "work")
        self.work.mkdir(parents=True, exist_ok=True)
        self.size = args.model if args.model in ("full", "tiny") else None
        self.model = ROOT / "models" / f"bge-m3-{self.size}" if self.size else Path(args.model)
        self.parts = [part for part in PARTS if part.name in args.parts]  # in the check's order
        self.report: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "device": args.device,
                                       "model": args.model, "quick": args.quick, "budget_s": args.budget_s,
                                       "parts_asked": [part.name for part in self.parts], "parts": {}}
        self.path: Path | None = None  # named once, after the first part (env names the GPU)

    def run(self) -> dict[str, Any]:
        """Every part in turn, the JSON written after each (``save``) and once more however the
        run ends: a timeout's ``SystemExit`` leaves the part it stopped marked ``interrupted``."""
        try:
            for part in self.parts:
                self._part(part)
                self.save()
        finally:
            _progress(f"written to {self.save()}")
        return self.report

    def _part(self, part: Part) -> None:
        limit = min(part.quick_limit_s if self.args.quick else part.limit_s, self.deadline - time.monotonic())
        if limit < MIN_PART_S:
            self.report["parts"][part.name] = {"skipped": f"{limit:.0f} s left of the time budget"}
            return
        self.report["parts"][part.name] = {"error": "interrupted (the check was stopped during this part)"}
        started = time.monotonic()
        try:
            result = self._run(part.name, limit)
        except Exception as exc:  # noqa: BLE001 - one part's failure must leave the others' figures
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result.setdefault("part_seconds", round(time.monotonic() - started, 1))
        self.report["parts"][part.name] = result
        shown = f"{result['error']}\n{result.get('stderr_tail', '')[-1500:]}" if "error" in result else \
            json.dumps(result)[:400]
        _progress(f"{part.name}: {shown}")

    def save(self) -> Path:
        """The report so far, with its verdicts, written to its file (the same one after every part)."""
        self.report["summary"] = summary(self.report["parts"], self.args.device)
        self.path = self.path or Path(self.args.out) / file_name(self.report)
        self.path.write_text(json.dumps(self.report, indent=1) + "\n")
        return self.path

    def _run(self, name: str, limit: float) -> dict[str, Any]:
        if name == "build":
            return self._build()
        if name == "gpu_tests":
            return self._gpu_tests(limit)
        base = ["--device", self.args.device, "--model", str(self.model), "--work", str(self.work)]
        base += ["--quick"] if self.args.quick else []
        in_server = name in ("server", "bare_app", "two_engines")
        module = ["-m", "bench.gpu.server", "--only", name] if in_server else ["-m", "bench.gpu.parts", name]
        return run_json([sys.executable, *module, *base], limit)

    def _build(self) -> dict[str, Any]:
        started = time.monotonic()
        if self.size == "full":
            build_model(self.model, "full")
        elif self.size == "tiny":
            build_model(self.model, "tiny")
        built_s = round(time.monotonic() - started, 1)
        write_texts(self.model, self.work / "texts.json", 512 if self.args.quick else 2048)
        return {"model": str(self.model), "build_seconds": built_s, "config": _config(self.model)}

    def _gpu_tests(self, limit: float) -> dict[str, Any]:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                   *GPU_TESTS]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {limit:.0f} s"}
        lines = done.stdout.strip().splitlines()
        return {"returncode": done.returncode, "summary": lines[-1] if lines else "",
                **({"output_tail": done.stdout[-3000:]} if done.returncode else {})}


def run_json(command: list[str], limit: float) -> dict[str, Any]:
    """Run a part; its last stdout line is its JSON. A failure or timeout becomes an ``error`` entry."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        return {"error": f"timed out after {limit:.0f} s", "stderr_tail": _text(tail)}
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return {"error": f"exit code {done.returncode}", "stderr_tail": done.stderr[-3000:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _text(data: bytes | str) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _progress(line: str) -> None:
    print(f"[gpu.check {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _config(model: Path) -> dict[str, int]:
    config = json.loads((model / "config.json").read_text())
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    return {k: config[k] for k in keys}


def write_texts(model: Path, path: Path, bulk: int) -> None:
    """The bulk documents (200-500 tokens) and short queries (8-16) every part uses, with their token counts."""
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))

    def count(texts: list[str]) -> list[int]:
        return [len(e.ids) for e in tokenizer.encode_batch(texts)]

    documents = texts_of_tokens(bulk, 200, 500, count, seed=11)
    queries = texts_of_tokens(2048, 8, 16, count, seed=12)
    path.write_text(json.dumps({"bulk": {"texts": documents, "tokens": count(documents)},
                                "queries": {"texts": queries, "tokens": count(queries)}}))


# -- the verdicts ------------------------------------------------------------------


def flops_per_token(config: dict[str, int]) -> int:
    """The encoder's matrix-product FLOPs per token for a model's config.json."""
    return encoder_flops_per_token(config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"])


def _get(parts: dict[str, Any], *path: str) -> Any:
    value: Any = parts
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


TARGETS: tuple[tuple[str, tuple[str, ...], str, float], ...] = (
    ("bulk_dense_tokens_per_s", ("server", "server", "bulk_dense", "tokens_per_s"), ">=", 250_000),
    ("bulk_all_kinds_float16_tokens_per_s", ("server", "server", "bulk_all_kinds_float16", "tokens_per_s"), ">=",
     120_000),
    ("short_queries_per_s", ("server", "server", "short_queries", "requests_per_s"), ">=", 5_000),
    ("short_queries_p99_ms", ("server", "server", "short_queries", "p99_ms"), "<", 50),
    ("lone_query_p50_ms", ("server", "server", "lone_query", "p50_ms"), "<", 10),
    ("query_p99_under_bulk_vs_lone_p50", ("server", "server", "queries_under_bulk", "p99_vs_lone_p50"), "<=", 2.0),
    ("float32_parity_with_flagembedding", ("parity", "flagembedding", "within_cpu_tolerances"), "==", True),
    ("float16_dense_cosine_min", ("parity", "float16_vs_float32", "dense_cosine_min"), ">=", 0.999),
    ("bfloat16_dense_cosine_min", ("parity", "bfloat16_vs_float32", "dense_cosine_min"), ">=", 0.999),
)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b}


def summary(parts: dict[str, Any], device: str) -> dict[str, Any]:
    """The targets (met, not met, or not measured) and the derived ratios."""
    out: dict[str, Any] = {"targets": {}}
    for name, path, op, target in TARGETS:
        value = _get(parts, *path)
        met = None if value is None else bool(_COMPARE[op](value, target))
        out["targets"][name] = {"value": value, "target": f"{op} {target}", "met": met}
    flag = _get(parts, "flag", "dense", "tokens_per_s")
    bulk = _get(parts, "server", "server", "bulk_dense", "tokens_per_s")
    if flag and bulk:
        ratio = round(bulk / flag, 2)
        out["targets"]["bulk_dense_vs_flagembedding"] = {"value": ratio, "target": ">= 3", "met": ratio >= 3}
    out |= _peak_shares(parts, bulk)
    out["all_measured_targets_met"] = all(t["met"] for t in out["targets"].values() if t["met"] is not None)
    out["not_measured"] = [name for name, t in out["targets"].items() if t["met"] is None]
    out["device"] = device
    return out


def _peak_shares(parts: dict[str, Any], bulk: float | None) -> dict[str, Any]:
    config = _get(parts, "build", "config")
    # The server runs float16 on a GPU (DTYPE=auto); a CPU has only a bfloat16 peak to compare with.
    peak = _get(parts, "peak", "float16_tflops") or _get(parts, "peak", "bfloat16_tflops")
    if not config or not peak:
        return {}
    flops = flops_per_token(config)
    out: dict[str, Any] = {"flops_per_token": flops, "half_peak_tflops": peak}
    if bulk:
        out["bulk_dense_share_of_half_peak"] = round(bulk * flops / (peak * 1e12), 3)
    budgets = _get(parts, "engine", "budgets") or {}
    out["engine_dense_share_of_half_peak"] = {
        budget: round(figures["dense"]["tokens_per_s"] * flops / (peak * 1e12), 3)
        for budget, figures in budgets.items() if "dense" in figures}
    return out


def file_name(report: dict[str, Any]) -> str:
    gpu = _get(report, "parts", "env", "gpu") or ("cpu" if report["device"] == "cpu" else _nvidia_name())
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", gpu).strip("-") or "unknown"
    quick = "-quick" if report["quick"] else ""
    some = "-some-parts" if len(report["parts_asked"]) < len(PARTS) else ""
    return f"gpu-check-{time.strftime('%Y-%m-%d-%H%M')}-{slug}{quick}{some}.json"


def _nvidia_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0", help="cuda:0 on the GPU machine; cpu to try it here")
    parser.add_argument("--model", default="full", help="full, tiny, or a bge-m3 folder")
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer texts and budgets")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"), help="where the JSON goes ($OUT there)")
    parser.add_argument("--work", help="texts and server logs (default: OUT/work)")
    parser.add_argument("--budget-s", type=float,
                        help=f"the whole check's time ({BUDGET_S} s; quick {QUICK_BUDGET_S} s)")
    parser.add_argument("--parts", default=",".join(p.name for p in PARTS),
                        help="the parts to run, in the check's order (a rerun of those a budget skipped: "
                             "env,build,engine,two_engines; the parts after build need it)")
    args = parser.parse_args()
    args.parts = set(args.parts.split(","))
    if unknown := args.parts - {p.name for p in PARTS}:
        parser.error(f"no such part: {', '.join(sorted(unknown))}")
    args.budget_s = args.budget_s or (QUICK_BUDGET_S if args.quick else BUDGET_S)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    # A timeout's SIGTERM ends the check as an exception would: the part running is stopped
    # (subprocess.run kills it) and the file keeps every part finished, that one marked.
    signal.signal(signal.SIGTERM, _stopped)
    report = Check(args).run()
    print(json.dumps(report), flush=True)


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


if __name__ == "__main__":
    main()
