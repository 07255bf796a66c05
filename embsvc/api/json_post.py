"""The one shape of the endpoints that compute: POST a JSON object, get JSON back.

Every such endpoint reads its body the same bounded way, turns it into a request of its own
(``parse``; the request's lane and its client check ride along: ``body.options_of``), and
answers with what its service makes of it (``answer``). Validation fails where it is found,
as an ``APIError``; embsvc/errors.py turns it into a response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import falcon

from embsvc.api.body import options_of, read_json_object
from embsvc.config import Settings
from gpu_pool import JobOptions

R = TypeVar("R")


class JsonPost(Generic[R]):
    auth_required = True

    def __init__(self, settings: Settings, parse: Callable[[dict[str, Any], Settings, JobOptions], R],
                 answer: Callable[[R], bytes], *, tei_shape: bool = False) -> None:
        """``tei_shape``: errors in text-embeddings-inference's shape (its API's paths)."""
        self.settings, self.parse, self.answer, self.tei_shape = settings, parse, answer, tei_shape

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, self.settings.max_request_bytes)
        request = self.parse(body, self.settings, options_of(req, body))
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.answer(request)
