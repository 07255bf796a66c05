"""docs/api.md's table of endpoints names every operation of the OpenAPI document that
/openapi.json serves (written out in embsvc/openapi/), and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from falcon import testing

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"
OPERATION = re.compile(r"`(GET|POST|PUT|DELETE|PATCH) (/[^`]*)`")


def _same_parameters(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def documented() -> set[tuple[str, str]]:
    table = API_MD.read_text(encoding="utf-8").split("## Endpoints", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    return {(method.lower(), _same_parameters(path)) for row in rows for method, path in OPERATION.findall(row)}


def test_the_endpoint_table_is_the_openapi_document(client: testing.TestClient) -> None:
    paths = client.simulate_get("/openapi.json").json["paths"]
    served = {(method, _same_parameters(path)) for path, item in paths.items() for method in item
              if method != "parameters"}
    assert documented() == served
