"""BGE-M3: the XLM-RoBERTa encoder and its three heads, run on one device.

The arithmetic follows FlagEmbedding's ``BGEM3FlagModel`` exactly (CLS pooling,
``relu(sparse_linear(H))``, ``colbert_linear(H[:, 1:]) * mask`` then L2 norm), so
that the vectors match it; see tests/integration/test_vectors_match_flagembedding.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel

from gpu_pool.protocol import Kind


@dataclass(frozen=True)
class Outputs:
    """Float32 numpy arrays for a padded batch; absent kinds are None."""

    dense: np.ndarray | None  # [batch, dim]
    sparse: np.ndarray | None  # [batch, tokens]: weight of every position
    colbert: np.ndarray | None  # [batch, tokens - 1, dim], rows of the wanting items only


class M3Model:
    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.encoder = AutoModel.from_pretrained(str(path), dtype=dtype, add_pooling_layer=False)
        self.encoder.to(device).eval()
        hidden = self.encoder.config.hidden_size
        self.dim = hidden
        self.sparse_linear = _load_linear(path / "sparse_linear.pt", hidden, 1, device, dtype)
        self.colbert_linear = _load_linear(path / "colbert_linear.pt", hidden, hidden, device, dtype)
        self.pad_id = int(self.encoder.config.pad_token_id)

    @torch.inference_mode()
    def forward(self, ids: np.ndarray, lengths: np.ndarray, kinds: Kind, colbert_rows: np.ndarray) -> Outputs:
        """Run one padded batch; ``colbert_rows`` selects the rows that want ColBERT vectors."""
        input_ids = torch.from_numpy(ids).to(self.device, non_blocking=True)
        positions = torch.arange(ids.shape[1], device=self.device)
        mask = (positions[None, :] < torch.from_numpy(lengths).to(self.device)[:, None]).long()
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask, return_dict=True).last_hidden_state
        dense = sparse = colbert = None
        if kinds & Kind.DENSE:
            dense = _numpy(F.normalize(hidden[:, 0].float(), dim=-1))
        if kinds & Kind.SPARSE:
            sparse = _numpy(torch.relu(self.sparse_linear(hidden)).squeeze(-1))
        if kinds & Kind.COLBERT and len(colbert_rows):
            rows = torch.from_numpy(colbert_rows).to(self.device)
            vecs = self.colbert_linear(hidden[rows, 1:]) * mask[rows, 1:, None].to(hidden.dtype)
            colbert = _numpy(F.normalize(vecs.float(), dim=-1))
        return Outputs(dense, sparse, colbert)


def _load_linear(path: Path, n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Linear:
    layer = torch.nn.Linear(n_in, n_out)
    layer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return layer.to(device=device, dtype=dtype).eval()


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.float().cpu().numpy()
