"""``GET /docs``: the interactive API page (Swagger UI), as the original FastAPI service
served it, without a token, reading ``/openapi.json``.

The page's script and style come from the swagger-ui-py package's copy of Swagger UI 5
(which reads OpenAPI 3.1), served from ``/docs/<file>``: the browser fetches nothing from
another host, so the page works on a closed network.
"""

from __future__ import annotations

import html
import importlib.util
from pathlib import Path

import falcon

from embsvc.errors import NotFound

# The files the page loads, and their types; nothing else of the package is served.
_ASSETS = {"swagger-ui.css": "text/css; charset=utf-8",
           "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
           "favicon-32x32.png": "image/png"}

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  persistAuthorization: false,  // the token stays in the page, never in the browser's storage
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]
}});
</script>
</body>
</html>
"""


def swagger_ui_folder() -> Path:
    """The package's static folder, found without importing it (its ``__init__`` loads jinja2)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("the swagger-ui-py package is not installed (requirements.txt)")
    return Path(spec.origin).parent / "static"


class Docs:
    auth_required = False

    def __init__(self, model_name: str) -> None:
        self.page = _PAGE.format(title=html.escape(f"{model_name} embedding server - Swagger UI")).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.data = self.page


class DocsAsset:
    auth_required = False

    def __init__(self) -> None:
        self.folder = swagger_ui_folder()

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if name not in _ASSETS:
            raise NotFound(f"no such file of the API page: {name}")
        resp.content_type = _ASSETS[name]
        resp.cache_control = ["public", "max-age=86400"]
        resp.data = (self.folder / name).read_bytes()
