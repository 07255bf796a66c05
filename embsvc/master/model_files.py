"""Making sure the model folder holds a complete BGE-M3 before the engine loads it."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

HEAD_FILES = ("sparse_linear.pt", "colbert_linear.pt")


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


def download(path: Path, model_name: str) -> None:
    from huggingface_hub import snapshot_download

    from embsvc.master.download_progress import LoggedProgress

    log.info("Downloading %s from the Hugging Face Hub into %s", model_name, path)
    try:
        snapshot_download(
            repo_id=model_name,
            local_dir=str(path),
            ignore_patterns=["*.onnx", "onnx/*", "*.msgpack", "*.h5", "*.ot", "imgs/*"],
            # Progress as log lines (files, then bytes), not as terminal bars.
            tqdm_class=LoggedProgress,
        )
    except Exception as exc:
        raise ModelFilesError(f"could not download {model_name} into {path}: {exc}") from exc
    log.info("Downloaded %s into %s", model_name, path)
