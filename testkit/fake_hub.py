"""A Hugging Face Hub stand-in on loopback: serves one folder as a model repository.

Just enough of the Hub's HTTP API for ``huggingface_hub.snapshot_download``:
the repository's revision, its file tree, and each file (HEAD for metadata, GET
for content). Point ``HF_ENDPOINT`` at ``FakeHub.url``.
"""

from __future__ import annotations

import hashlib
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

from testkit.loopback import serve

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, folder: Path, repo_id: str) -> None:
        self.repo_id = repo_id
        # Read once: the repository does not change under a download, whatever happens to the folder.
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
                      if p.is_file()}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        serve(self._server)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _tree(self) -> list[dict]:
        return [{"type": "file", "path": name, "size": len(data), "oid": _etag(data)}
                for name, data in self.files.items()]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        # The server makes a handler per request from a class alone: one class per hub.
        return type("Handler", (_Handler,), {"hub": self})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub  # set on the subclass that FakeHub._handler makes

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        hub = self.hub
        path = unquote(urlparse(self.path).path)
        hub.requests.append(f"{self.command} {path}")
        api = f"/api/models/{hub.repo_id}"
        if path.startswith(f"{api}/revision/"):
            self._json({"id": hub.repo_id, "sha": COMMIT,
                        "siblings": [{"rfilename": name} for name in hub.files]}, body)
        elif path.startswith(f"{api}/tree/"):
            self._json(hub._tree(), body)
        elif path.startswith(f"/{hub.repo_id}/resolve/"):
            name = path.split("/resolve/", 1)[1].split("/", 1)[1]
            data = hub.files.get(name)
            if data is None:
                self._send(404, b"", {}, body)
            else:
                self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{_etag(data)}"',
                                       "Content-Type": "application/octet-stream"}, body)
        else:
            self._send(404, b"", {}, body)

    def _json(self, payload: object, body: bool) -> None:
        self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"}, body)

    def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


def _etag(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()
