"""A small Python client for this server: the sparse and ColBERT vectors that no standard client carries.

Runs in:      the user's own program, on any machine that reaches the server over HTTP.
May import:   httpx, numpy, tqdm and the standard library only; never ``embsvc``, ``gpu_pool`` or
              ``runtime`` (tests/unit/test_layout.py checks it), so it works without the server's code.
Owns:         requests to ``/v1/embeddings``, ``/v1/score``, ``/v1/rerank`` and ``/tokenize``: batching,
              retries, base64 decoding into numpy arrays, the server's errors as typed exceptions.
Entry points: ``Client`` (blocking) and ``AsyncClient`` (asyncio), with the same methods.

Install: copy this folder next to your code (or put the repository on ``PYTHONPATH``) and
``pip install httpx tqdm numpy``; nothing else from the server is needed. docs/clients.md shows it
in use, and docs/vector-databases.md feeds Qdrant and Milvus with it::

    from embsvc_client import Client

    with Client("http://localhost:8000", token="your_api_token_here") as client:
        result = client.embed(["What is BGE-M3?"], dense=True, sparse=True, colbert=True)
        result.dense        # numpy array [texts, 1024]
        result.sparse[0]    # {token id: weight}
        result.colbert[0]   # numpy array [tokens - 1, 1024]
"""

from embsvc_client.client import AsyncClient, Client
from embsvc_client.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    EmbsvcError,
    GatewayTimeoutError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
)
from embsvc_client.results import Embeddings, Ranked, Score, Tokens
from embsvc_client.retry import Retry

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "Embeddings",
    "EmbsvcError",
    "GatewayTimeoutError",
    "InternalServerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "Ranked",
    "RateLimitError",
    "Retry",
    "Score",
    "ServiceUnavailableError",
    "Tokens",
]
__version__ = "1.0.0"
