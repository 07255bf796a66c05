"""A web worker freezes what it has loaded out of the garbage collector's reach
(embsvc/master/hooks.py ``post_worker_init``), so that a full collection stalls no request.
The engine does the same after its warm-up (gpu_pool/engine/main.py; bench.priority shows it)."""

from __future__ import annotations

import gc

from embsvc.master import hooks


def test_a_web_worker_freezes_what_it_has_loaded():
    gc.unfreeze()
    try:
        hooks.post_worker_init(None)  # type: ignore[arg-type]  # the hook does not read its worker
        assert gc.get_freeze_count() > 10_000  # the app's modules and libraries
    finally:
        gc.unfreeze()
