"""The services behind the endpoints, free of HTTP: tokenize, call the backend, serialize.

Runs in:      web workers.
May import:   numpy, orjson, tokenizers, ``embsvc.errors``, ``gpu_pool``'s ``__all__``; not falcon.
Owns:         the backend port (``backend.Backend``), embedding, scoring and tokenize services,
              the tokenizer, the response bodies (``serialize``; TEI's shapes from the same services in ``tei``).
Entry points: ``EmbeddingService``, ``ScoreService``, ``TokenizeService``, ``TEIService``, ``LazyTokenizer``.
"""
