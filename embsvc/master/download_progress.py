"""Download progress as log lines instead of terminal progress bars.

huggingface_hub draws tqdm bars with carriage returns: unreadable in a
container's log and invalid among JSON lines. ``snapshot_download`` accepts any
tqdm class for its bars (files fetched, bytes received, bytes written), so this
one draws each bar as an ordinary log record, at most one per
``interval_s`` and one when the bar finishes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("gpu_pool.download")


class _Discard:
    encoding = "utf-8"

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class LoggedProgress(tqdm):  # type: ignore[type-arg]  # generic in its stubs only: not subscriptable at run time
    interval_s = 10.0
    clock = staticmethod(time.monotonic)

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # tqdm's own arguments, passed on
        # Set before tqdm's __init__, which already draws the bar once.
        self._logged_at = float("-inf")
        self._logged_n: float = 0
        kwargs.pop("name", None)  # huggingface_hub's own bar class takes it; tqdm does not
        kwargs["file"] = _Discard()
        kwargs["disable"] = False  # whatever HF_HUB_DISABLE_PROGRESS_BARS says: this is the log, not a bar
        super().__init__(*args, **kwargs)

    # tqdm's display returns whether it drew; its stubs say None.
    def display(self, msg: str | None = None, pos: int | None = None) -> bool:  # type: ignore[override]
        if not self.n or self.n == self._logged_n:
            return True
        now = self.clock()
        finished = bool(self.total and self.n >= self.total)
        # tqdm sets ``disable`` when it closes the bar, before drawing it a last time.
        if finished or self.disable or now - self._logged_at >= self.interval_s:
            self._logged_at, self._logged_n = now, self.n
            self._log()
        return True

    def _log(self) -> None:
        desc = (self.desc or "Download").rstrip(": ")
        total = self.total or None
        if self.unit == "B":
            done_text = f"{self.format_sizeof(self.n)}B"
            total_text = f" of {self.format_sizeof(total)}B" if total else ""
        else:
            unit = "" if self.unit == "it" else f" {self.unit}"  # "Fetching 12 files: 5 of 12"
            done_text = f"{self.n:g}"
            total_text = f" of {total:g}{unit}" if total else unit
        percent = f" ({100 * self.n / total:.0f}%)" if total else ""
        elapsed = self.format_dict.get("elapsed") or 0
        rate = f", {self.format_sizeof(self.n / elapsed)}B/s" if self.unit == "B" and elapsed > 0 else ""
        log.info("%s: %s%s%s%s", desc, done_text, total_text, percent, rate,
                 extra={"event": "download_progress", "progress": desc, "done": self.n, "total": total,
                        "unit": self.unit})
