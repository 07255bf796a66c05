"""Build randomly initialised cross-encoders in the BAAI/bge-reranker-v2-m3 folder layout.

As ``testkit.model_builder`` does for bge-m3 (no model hub here): an
``XLMRobertaForSequenceClassification`` with one label, random weights, and the very
tokenizer files of the test bge-m3 models (bge-reranker-v2-m3 shares bge-m3's tokenizer).
The folder loads in transformers' ``AutoModelForSequenceClassification`` and in
FlagEmbedding's ``FlagReranker``, the reference the engine's scores are checked against.

    python -m testkit.reranker_builder PATH --size tiny|full [--seed N]

"tiny" (hidden 32, 2 layers) is for tests; "full" has bge-reranker-v2-m3's architecture
(24 layers, 1024 hidden, 4096 intermediate, 8194 positions, a 250002-row embedding), so its
compute is the real model's: it is for benchmarks. The same size and seed give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from testkit.model_builder import (
    FULL_VOCAB_SIZE,
    SPECIAL_TOKENS,
    Size,
    _reshape_attention,
    install,
    model_config,
    train_tokenizer,
)

if TYPE_CHECKING:
    from transformers import XLMRobertaConfig

BUILDER_VERSION = 1  # bump whenever the bytes written change
MARKER_NAME = ".built-by-reranker-builder.json"
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
# A different stream of random weights from the bge-m3 model of the same seed.
_SEED_OFFSET = 7919


def is_built(path: Path, size: Size, seed: int = 0) -> bool:
    """Whether ``path`` holds a complete cross-encoder built here with this size and seed."""
    try:
        marker = json.loads((Path(path) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return marker == _marker(size, seed) and all((Path(path) / name).is_file() for name in MODEL_FILES)


def build_reranker(path: Path, size: Size, seed: int = 0) -> Path:
    """Write a random bge-reranker-v2-m3 look-alike into ``path`` and return ``path``; at once when
    it already holds that model. Built beside and moved in, marker last, as ``build_model`` does."""
    path = Path(path)
    if is_built(path, size, seed):
        return path
    install(path, MODEL_FILES, MARKER_NAME, _marker(size, seed), lambda staging: _write(staging, size, seed))
    return path


def _marker(size: Size, seed: int) -> dict[str, Any]:
    return {"builder_version": BUILDER_VERSION, "size": size, "seed": seed}


def reranker_config(size: Size, tokenizer_size: int) -> XLMRobertaConfig:
    """bge-reranker-v2-m3's config.json fields, with the architecture of ``size``: bge-m3's encoder
    and one label. The full size keeps the 250002-row embedding; the tiny one, the tokenizer's."""
    config = model_config(size, FULL_VOCAB_SIZE if size == "full" else tokenizer_size)
    config.architectures = ["XLMRobertaForSequenceClassification"]
    config.num_labels = 1  # one logit per pair: id2label {0: "LABEL_0"}, as bge-reranker-v2-m3 has
    return config


def _write(folder: Path, size: Size, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaForSequenceClassification

    tokenizer = train_tokenizer()
    tokenizer.save_pretrained(folder)
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n")
    config = reranker_config(size, len(tokenizer))
    config.save_pretrained(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + _SEED_OFFSET)
        model = XLMRobertaForSequenceClassification(config).eval()
        # Tokens keep their identity through the layers (see model_builder), so that the <s> row,
        # hence the score, depends on the whole pair.
        _reshape_attention(model.roberta, config.initializer_range)
    save_file(model.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testkit.reranker_builder",
                                     description="Build a random cross-encoder in the BAAI/bge-reranker-v2-m3 layout.")
    parser.add_argument("path", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--size", choices=get_args(Size), required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    built = is_built(args.path, args.size, args.seed)
    build_reranker(args.path, args.size, args.seed)
    print(f"{args.path}: {'already built' if built else 'built'} ({args.size}, seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
