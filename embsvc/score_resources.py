"""``POST /v1/score`` and ``POST /v1/rerank`` (also at ``/v2/rerank``, where Cohere's v2 clients send it)."""

from __future__ import annotations

import falcon

from embsvc.score_request import parse_rerank_request, parse_score_request
from embsvc.score_service import ScoreService
from embsvc.validation import read_json_object


class Score:
    auth_required = True

    def __init__(self, scores: ScoreService) -> None:
        self.scores = scores

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        settings = self.scores.service.settings
        request = parse_score_request(read_json_object(req, settings.max_request_bytes), settings)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.scores.score(request)


class Rerank:
    auth_required = True

    def __init__(self, scores: ScoreService) -> None:
        self.scores = scores

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        settings = self.scores.service.settings
        request = parse_rerank_request(read_json_object(req, settings.max_request_bytes), settings)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.scores.rerank(request)
