"""The engine's model run in this process, a whole pass at a time, through the port the engine's
device thread drives step by step (gpu_pool/model/port.py)."""

from __future__ import annotations

import numpy as np

from gpu_pool.model.port import Model, Outputs
from gpu_pool.wire.protocol import Kind


def forward(model: Model, ids: np.ndarray, lengths: np.ndarray, kinds: Kind, colbert_texts: np.ndarray,
            step_tokens: int | None = None) -> Outputs:
    """The outputs of one pass over the packed ``ids``, every step run in a row; ``colbert_texts``
    picks the texts that want ColBERT."""
    running = model.start(ids, lengths, kinds, colbert_texts, step_tokens)
    running.finish()
    return running.outputs_async().wait()
