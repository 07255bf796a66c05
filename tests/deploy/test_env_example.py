""".env.example: UTF-8, every setting of docs/api.md named and commented, and
readable by docker compose (env_file) as well as by the server (python-dotenv)."""

from __future__ import annotations

import re

from .helpers import ROOT, api_settings

ENV_EXAMPLE = ROOT / ".env.example"
LINE = re.compile(r"^(?P<commented>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def lines() -> list[str]:
    raw = ENV_EXAMPLE.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf"), "no byte order mark: docker compose would read it into the first name"
    return raw.decode("utf-8").splitlines()


def settings() -> dict[str, tuple[int, bool, str]]:
    """name -> (line index, commented out?, value)."""
    found: dict[str, tuple[int, bool, str]] = {}
    for index, line in enumerate(lines()):
        match = LINE.match(line)
        if match:
            assert match["name"] not in found, f"{match['name']} appears twice"
            found[match["name"]] = (index, bool(match["commented"]), match["value"])
    return found


def test_every_api_setting_is_named() -> None:
    found = settings()
    missing = [name for name in [*api_settings(), "BIND"] if name not in found]
    assert not missing, f".env.example lacks {missing} (docs/api.md's table)"


def test_every_setting_is_explained() -> None:
    text = lines()
    for name, (index, _, _) in settings().items():
        # The nearest line above that is not itself a setting is a comment.
        j = index - 1
        while j >= 0 and LINE.match(text[j]):
            j -= 1
        assert j >= 0 and text[j].startswith("# ") and len(text[j]) > 3, f"{name} has no comment above it"


def test_active_lines_are_plain_values() -> None:
    """docker compose's env_file keeps quotes and trailing comments as part of the value."""
    for name, (_, commented, value) in settings().items():
        if commented:
            continue
        assert value == value.strip(), name
        assert not value.startswith(("'", '"')), f"{name}: no quotes"
        assert " #" not in value, f"{name}: no comment after a value"


def test_only_the_token_is_set_and_it_is_the_placeholder() -> None:
    active = {name: value for name, (_, commented, value) in settings().items() if not commented}
    # The placeholder makes the server refuse to start until it is replaced.
    assert active == {"API_TOKEN": "your_api_token_here"}


def test_the_server_reads_the_same_values() -> None:
    from dotenv import dotenv_values

    assert dotenv_values(ENV_EXAMPLE) == {"API_TOKEN": "your_api_token_here"}
