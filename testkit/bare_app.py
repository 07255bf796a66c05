"""A bare Falcon app on the server's embeddings route, answering a canned body of the size a
short query's answer has (one dense vector, base64, twice: ``embedding`` and ``dense_embedding``).

Served by gunicorn with the server's worker settings, it is the ceiling that gunicorn, Falcon
and the load generator allow on a machine: the device check measures it beside the real server,
so that a short-query figure can be read as the server's or the client's limit.

    gunicorn -k gthread --threads 32 -w N testkit.bare_app:app
"""

from __future__ import annotations

import base64

import falcon
import orjson

_VECTOR = base64.b64encode(bytes(4096)).decode()
BODY = orjson.dumps({
    "object": "list", "model": "BAAI/bge-m3", "embedding_types": ["dense"],
    "data": [{"object": "embedding", "index": 0, "embedding": _VECTOR, "dense_embedding": _VECTOR,
              "sparse_embedding": None, "colbert_embedding": None}],
    "usage": {"prompt_tokens": 12, "total_tokens": 12},
})


class Canned:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        orjson.loads(req.bounded_stream.read())  # the server parses every body too
        resp.data = BODY
        resp.content_type = falcon.MEDIA_JSON


app = falcon.App()
app.add_route("/v1/embeddings", Canned())
