"""Reading request bodies and the fields that several endpoints share; every failure
is an APIError with a clear message."""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import falcon
import orjson

from embsvc.config import Settings
from embsvc.core.windows import DENSE_DIM
from embsvc.errors import EmptyInput, InvalidRequest, NotFound, PayloadTooLarge
from gpu_pool import JobOptions, Lane


@dataclass(frozen=True)
class Wording:
    """How ``texts`` words its refusals ({field}, {where}, {index}, {count}, {limit} filled in)."""

    empty: str  # an empty list
    blank: str  # an empty or white-space text
    too_many: str
    token_ids: str  # token ids where texts belong


# ``input``: the original service's words, which its clients may show or match;
# token ids are what LangChain's OpenAIEmbeddings sends by default (tiktoken's cl100k ids).
ORIGINAL_WORDS = Wording(
    empty="Input cannot be empty",
    blank="Text at index {index} is too short (minimum 1 characters)",
    too_many="Too many texts in batch: {count} (maximum: {limit})",
    token_ids="{field} holds token ids, not text; this server tokenizes text itself. LangChain's OpenAIEmbeddings "
              "sends OpenAI's (tiktoken) token ids unless it is made with check_embedding_ctx_length=False",
)
# TEI's ``inputs`` and ``texts``: text-embeddings-inference's words.
TEI_WORDS = Wording(
    empty="`{field}` cannot be empty",
    blank="`{where}` cannot be empty or white space only",
    too_many="batch size {count} > maximum allowed batch size {limit}",
    token_ids="`{field}` holds token ids: this server embeds text only; send strings",
)


def read_json_object(req: falcon.Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type, never reading past ``max_bytes``."""
    length = req.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {max_bytes} bytes")
    # A chunked body has no Content-Length, and Falcon's bounded_stream then reads
    # nothing; gunicorn ends its own stream with the body (wsgi.input_terminated).
    chunked = length is None and req.env.get("wsgi.input_terminated")
    raw = (req.stream if chunked else req.bounded_stream).read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
    if not raw.strip():
        raise EmptyInput("request body is empty: send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc.msg}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def model_field(body: dict[str, Any], settings: Settings) -> str:
    """The body's ``model``, ``MODEL_NAME`` when absent."""
    model = body.get("model", settings.model_name)
    if not isinstance(model, str):
        raise InvalidRequest("model must be a string", param="model")
    return model


def check_model(body: dict[str, Any], settings: Settings) -> None:
    """``model`` names bge-m3: the cross-encoder only ranks (a 400 says where it does), another name is a 404."""
    model = model_field(body, settings)
    if model in settings.model_names():
        return
    if model in settings.reranker_names() and settings.reranker_path is not None:
        raise InvalidRequest(f"model {model!r} is a cross-encoder: it ranks documents for a query on /v1/rerank, "
                             f"/v2/rerank and /rerank; {settings.model_name!r} serves this endpoint", param="model")
    served = " and ".join(repr(name) for name in settings.served_models())
    raise NotFound(f"model {model!r} does not exist; this server serves {served}", param="model")


def texts(body: dict[str, Any], field: str, max_inputs: int, wording: Wording = ORIGINAL_WORDS) -> list[str]:
    if field not in body:
        raise InvalidRequest(f"{field} is required: a string or a list of strings", param=field)
    value = body[field]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise InvalidRequest(f"{field} must be a string or a list of strings", param=field)
    if not items:
        raise EmptyInput(wording.empty.format(field=field), param=field)
    if _token_ids(items):  # before the count: a client sending ids should learn that first
        raise InvalidRequest(wording.token_ids.format(field=field), param=field)
    if len(items) > max_inputs:
        raise PayloadTooLarge(wording.too_many.format(count=len(items), limit=max_inputs), param=field)
    for i, item in enumerate(items):
        where = field if isinstance(value, str) else f"{field}[{i}]"
        if not isinstance(item, str):
            raise InvalidRequest(f"{where} must be a string, not {_json_type(item)}", param=field)
        if not item.strip():
            raise EmptyInput(wording.blank.format(where=where, index=i), param=field)
    return items


def _token_ids(items: list[Any]) -> bool:
    """A list of integers, or of lists of integers: token ids, as OpenAI's API accepts them."""
    def ints(values: list[Any]) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    return ints(items) or all(isinstance(item, list) and ints(item) for item in items)


def max_length(body: dict[str, Any], limit: int, field: str = "max_length") -> int:
    value = body.get(field, limit)
    # JSON has one number type: 512.0 is the integer 512 (as JSON Schema says), 3.5 is not.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise InvalidRequest(f"{field} must be a whole number from 1 to {limit}", param=field)
    return value


def dimensions(body: dict[str, Any]) -> int | None:
    """OpenAI's ``dimensions``: the dense vector's first n components, normalised again; null or
    absent: the whole vector."""
    if body.get("dimensions") is None:
        return None
    return max_length(body, DENSE_DIM, "dimensions")


def boolean(body: dict[str, Any], field: str, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{field} must be true or false, not {_json_type(value)}", param=field)
    return value


def optional_str(body: dict[str, Any], field: str) -> None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string", param=field)


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return names.get(type(value), "a value of another type")


PRIORITY_HEADER = "X-Priority"
_LANES = {"interactive": Lane.INTERACTIVE, "bulk": Lane.BULK}


def options_of(req: falcon.Request, body: dict[str, Any]) -> JobOptions:
    """How the request wants its job run: its lane, and a check that its client is still there."""
    return JobOptions(priority(body, req.get_header(PRIORITY_HEADER)), client_gone(req))


def priority(body: dict[str, Any], header: str | None) -> Lane | None:
    """``priority`` in the body, else the X-Priority header (for clients that cannot add a field);
    neither: None, and the request's size decides."""
    if body.get("priority") is not None:
        value, where = body["priority"], "priority"
    elif header is not None:
        value, where = header.strip().lower(), PRIORITY_HEADER
    else:
        return None
    if not isinstance(value, str) or value not in _LANES:
        raise InvalidRequest(f'{where} must be "interactive" or "bulk"', param="priority")
    return _LANES[value]


def client_gone(req: falcon.Request) -> Callable[[], bool] | None:
    """A check that the client has closed its connection (None where it cannot be told:
    no socket in the environment, or TLS, whose socket cannot peek)."""
    sock = req.env.get("gunicorn.socket")
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return None

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            # Readable with nothing to read: the peer closed it. Pipelined bytes mean it is still there.
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    return gone
