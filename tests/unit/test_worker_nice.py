"""A web worker that may not lower its priority (a sandbox that refuses setpriority) says so and
serves on (embsvc/master/hooks.py ``_yield_to_engines``); tests/e2e/test_server.py checks that a
real server's workers are nicer than its engine."""

from __future__ import annotations

import logging
import os

from embsvc.master import hooks


def test_a_refused_niceness_is_logged_and_the_worker_goes_on(monkeypatch, caplog):
    def refuse(increment: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "nice", refuse)  # the refusal only a sandbox gives
    with caplog.at_level(logging.WARNING, logger="embsvc.master.hooks"):
        hooks._yield_to_engines(5)
    assert "WEB_WORKER_NICE=5 not applied" in caplog.text
    assert "Operation not permitted" in caplog.text

