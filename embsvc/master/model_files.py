"""Making sure the model folders hold a complete BGE-M3, and the cross-encoder beside it where
one is configured, before the engines load them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

HEAD_FILES = ("sparse_linear.pt", "colbert_linear.pt")
# Files of the Hub's repositories that no engine loads: other formats, pictures.
IGNORED = ["*.onnx", "onnx/*", "*.msgpack", "*.h5", "*.ot", "imgs/*", "assets/*"]


class ModelFilesError(RuntimeError):
    """The model folder is incomplete and could not be completed."""


def ensure_model(path: Path, model_name: str) -> Path:
    """Download ``model_name`` into ``path`` when it holds no config.json, then check it."""
    if not (path / "config.json").exists():
        download(path, model_name)
    missing = [name for name in HEAD_FILES if not (path / name).exists()]
    if missing:
        # FlagEmbedding would silently use random heads here; we refuse instead.
        raise ModelFilesError(
            f"model folder {path} lacks {', '.join(missing)}: the sparse and ColBERT heads "
            "of BGE-M3 are required"
        )
    return path


def ensure_reranker(path: Path, model_name: str) -> Path:
    """The cross-encoder's folder as ``ensure_model`` makes bge-m3's: downloaded when it holds no
    config.json, then checked to be a sequence classifier with one label (a score per pair)."""
    if not (path / "config.json").exists():
        download(path, model_name)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelFilesError(f"cross-encoder folder {path}: config.json cannot be read: {exc}") from None
    architectures = config.get("architectures") or []
    labels = len(config.get("id2label") or {"0": "LABEL_0"})
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures) or labels != 1:
        raise ModelFilesError(
            f"cross-encoder folder {path} holds {', '.join(map(str, architectures)) or 'no architecture'} with "
            f"{labels} labels: RERANKER_PATH needs bge-reranker-v2-m3's layout (XLMRobertaForSequenceClassification, "
            "one label); RERANKER_PATH=none serves bge-m3 alone"
        )
    return path


def download(path: Path, model_name: str) -> None:
    from huggingface_hub import snapshot_download

    from embsvc.master.download_progress import LoggedProgress

    log.info("Downloading %s from the Hugging Face Hub into %s", model_name, path)
    try:
        snapshot_download(
            repo_id=model_name,
            local_dir=str(path),
            ignore_patterns=IGNORED,
            # Progress as log lines (files, then bytes), not as terminal bars.
            tqdm_class=LoggedProgress,
        )
    except Exception as exc:
        raise ModelFilesError(f"could not download {model_name} into {path}: {exc}") from exc
    log.info("Downloaded %s into %s", model_name, path)
