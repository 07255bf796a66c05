"""The HTTP resources and middleware: read and check the request, call ``core``, answer.

Runs in:      web workers.
May import:   falcon, orjson, prometheus_client, ``embsvc.core``, ``embsvc.config``, ``embsvc.errors``,
              ``gpu_pool``'s ``__all__``, ``runtime``.
Owns:         one module per endpoint family (``embeddings``, ``scoring``, ``tokenize``, ``info``,
              ``metrics``, ``tei``: text-embeddings-inference's API, ``docs``: the Swagger UI page, served
              from the swagger-ui-py package's files), body reading (``body``), middleware (``auth``,
              ``request_id``, ``metrics``).
Entry points: the resource classes, wired in ``embsvc.app.create_app``.
"""
