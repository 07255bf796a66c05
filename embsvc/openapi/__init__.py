"""The OpenAPI 3.1 document of the server, built once per worker from the settings.

Runs in:      web workers (served at ``/openapi.json``; the fuzzing tests read it).
May import:   ``embsvc.config``, ``embsvc.core`` (request defaults), ``gpu_pool``'s ``__all__``.
Owns:         the schemas of every endpoint (``document``; scoring and tokenize in ``scoring``;
              text-embeddings-inference's API in ``tei``).
Entry points: ``build_openapi``.
"""

from embsvc.openapi.document import build_openapi

__all__ = ["build_openapi"]
