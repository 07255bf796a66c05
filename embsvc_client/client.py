"""``Client`` and ``AsyncClient``: the same calls over httpx, blocking or with asyncio.

Both build the same plans (plans.py: one body per batch, one function that joins the answers)
and differ only in how they send them: ``Client`` one batch after the other, ``AsyncClient``
up to ``concurrency`` batches at once. A refused request is sent again as ``Retry`` says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
from tqdm import tqdm

from embsvc_client import plans
from embsvc_client.errors import APIError, error_from
from embsvc_client.plans import DEFAULT_MODE, Answer, Plan
from embsvc_client.results import DType, Embeddings, Ranked, Score, Tokens
from embsvc_client.retry import Retry

T = TypeVar("T")

# The server's default MAX_INPUTS: the most inputs or documents one request may carry.
DEFAULT_BATCH_SIZE = 256
USER_AGENT = "embsvc-client/1.0.0"


def _headers(token: str | None, priority: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if priority is not None:
        if priority not in ("interactive", "bulk"):
            raise ValueError('priority must be "interactive" or "bulk"')
        headers["X-Priority"] = priority  # the server's lanes: an indexer says bulk
    return headers


def _answer(response: httpx.Response) -> Answer:
    if response.is_success:
        body: Answer = response.json()
        return body
    raise error_from(response)


class _Calls:
    """What both clients share: the settings, the plans of the four calls and the progress bar."""

    def __init__(self, *, batch_size: int, progress: bool, retry: Retry | None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.progress = progress
        self.retry = retry or Retry()

    def _bar(self, plan: Plan[Any]) -> tqdm[Any]:
        # disable=None: tqdm hides the bar itself when stderr is not a terminal.
        return tqdm(total=sum(plan.sizes), desc=plan.path, unit="text", disable=None if self.progress else True)

    def _embed_plan(self, texts: str | Sequence[str], dense: bool, sparse: bool, colbert: bool, dtype: DType,
                    max_length: int | None, truncate: bool) -> Plan[Embeddings]:
        return plans.embed(plans.as_texts(texts), self.batch_size, dense=dense, sparse=sparse, colbert=colbert,
                           dtype=dtype, max_length=max_length, truncate=truncate)


class Client(_Calls):
    """Blocking client. ``base_url`` is the server's root (``http://localhost:8000``), ``token``
    one of its ``API_TOKEN``s, ``timeout`` the seconds one request may take; long input lists go
    in batches of ``batch_size`` (at most the server's ``MAX_INPUTS``), with a tqdm bar when
    ``progress`` is true and stderr is a terminal. ``priority``: ``"bulk"`` for an indexer, so
    that the server's queries go first; ``"interactive"``; or None, and each request's size
    decides. Use it as a context manager, or ``close()`` it.
    """

    def __init__(self, base_url: str = "http://localhost:8000", token: str | None = None, *,
                 timeout: float = 120.0, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
                 retry: Retry | None = None, priority: str | None = None) -> None:
        super().__init__(batch_size=batch_size, progress=progress, retry=retry)
        self._http = httpx.Client(base_url=base_url, headers=_headers(token, priority), timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def embed(self, texts: str | Sequence[str], *, dense: bool = True, sparse: bool = False,
              colbert: bool = False, dtype: DType = "float32", max_length: int | None = None,
              truncate: bool = True) -> Embeddings:
        """The asked kinds of vectors of ``texts`` (``POST /v1/embeddings``), as numpy arrays of ``dtype``."""
        return self._run(self._embed_plan(texts, dense, sparse, colbert, dtype, max_length, truncate))

    def score(self, query: str, documents: Sequence[str], *, weights: Sequence[float] | None = None,
              max_length: int | None = None, truncate: bool = True) -> list[Score]:
        """Every score of each document against ``query`` (``POST /v1/score``), in document order."""
        return self._run(plans.score(query, documents, self.batch_size, weights=weights, max_length=max_length,
                                     truncate=truncate))

    def rerank(self, query: str, documents: Sequence[str], *, top_n: int | None = None, mode: str = DEFAULT_MODE,
               weights: Sequence[float] | None = None, max_length: int | None = None,
               truncate: bool = True) -> list[Ranked]:
        """The ``top_n`` best documents for ``query`` by the ``mode`` score (``POST /v1/rerank``), best first."""
        return self._run(plans.rerank(query, documents, self.batch_size, top_n=top_n, mode=mode, weights=weights,
                                      max_length=max_length, truncate=truncate))

    def tokenize(self, texts: str | Sequence[str], *, max_length: int | None = None,
                 truncate: bool = True) -> list[Tokens]:
        """The tokens of each text (``POST /tokenize``), cut as ``embed`` would cut them."""
        return self._run(plans.tokenize(plans.as_texts(texts), self.batch_size, max_length=max_length,
                                        truncate=truncate))

    def _run(self, plan: Plan[T]) -> T:
        answers = []
        with self._bar(plan) as bar:
            for body, size in zip(plan.bodies, plan.sizes, strict=True):
                answers.append(self._post(plan.path, body))
                bar.update(size)
        return plan.finish(answers)

    def _post(self, path: str, body: dict[str, Any]) -> Answer:
        attempt, started = 0, time.monotonic()
        while True:
            attempt += 1
            try:
                return _answer(self._http.post(path, json=body))
            except (APIError, httpx.TransportError) as error:  # Retry.wait picks those sent again
                wait = self.retry.wait(error, attempt, time.monotonic() - started)
                if wait is None:
                    raise
                time.sleep(wait)


class AsyncClient(_Calls):
    """The asyncio twin of ``Client``, with the same settings and calls (awaited); up to
    ``concurrency`` batches of one call are in flight at once, and the results keep input order."""

    def __init__(self, base_url: str = "http://localhost:8000", token: str | None = None, *,
                 timeout: float = 120.0, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
                 retry: Retry | None = None, concurrency: int = 4, priority: str | None = None) -> None:
        super().__init__(batch_size=batch_size, progress=progress, retry=retry)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(token, priority), timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def embed(self, texts: str | Sequence[str], *, dense: bool = True, sparse: bool = False,
                    colbert: bool = False, dtype: DType = "float32", max_length: int | None = None,
                    truncate: bool = True) -> Embeddings:
        """See ``Client.embed``."""
        return await self._run(self._embed_plan(texts, dense, sparse, colbert, dtype, max_length, truncate))

    async def score(self, query: str, documents: Sequence[str], *, weights: Sequence[float] | None = None,
                    max_length: int | None = None, truncate: bool = True) -> list[Score]:
        """See ``Client.score``."""
        return await self._run(plans.score(query, documents, self.batch_size, weights=weights,
                                           max_length=max_length, truncate=truncate))

    async def rerank(self, query: str, documents: Sequence[str], *, top_n: int | None = None,
                     mode: str = DEFAULT_MODE, weights: Sequence[float] | None = None,
                     max_length: int | None = None, truncate: bool = True) -> list[Ranked]:
        """See ``Client.rerank``."""
        return await self._run(plans.rerank(query, documents, self.batch_size, top_n=top_n, mode=mode,
                                            weights=weights, max_length=max_length, truncate=truncate))

    async def tokenize(self, texts: str | Sequence[str], *, max_length: int | None = None,
                       truncate: bool = True) -> list[Tokens]:
        """See ``Client.tokenize``."""
        return await self._run(plans.tokenize(plans.as_texts(texts), self.batch_size, max_length=max_length,
                                              truncate=truncate))

    async def _run(self, plan: Plan[T]) -> T:
        limit = asyncio.Semaphore(self.concurrency)
        with self._bar(plan) as bar:

            async def send(body: dict[str, Any], size: int) -> Answer:
                async with limit:
                    answer = await self._post(plan.path, body)
                bar.update(size)
                return answer

            tasks = [asyncio.ensure_future(send(body, size)) for body, size in zip(plan.bodies, plan.sizes,
                                                                                   strict=True)]
            try:
                answers = await asyncio.gather(*tasks)
            finally:  # one failed batch fails the call: stop sending the others
                for task in tasks:
                    task.cancel()
        return plan.finish(list(answers))

    async def _post(self, path: str, body: dict[str, Any]) -> Answer:
        attempt, started = 0, time.monotonic()
        while True:
            attempt += 1
            try:
                return _answer(await self._http.post(path, json=body))
            except (APIError, httpx.TransportError) as error:  # Retry.wait picks those sent again
                wait = self.retry.wait(error, attempt, time.monotonic() - started)
                if wait is None:
                    raise
                await asyncio.sleep(wait)
