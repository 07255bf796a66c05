"""The Dockerfile passes hadolint and keeps the promises of the README (Deployment)."""

from __future__ import annotations

import fnmatch
import http.server
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit import scripts
from testkit.loopback import serve

from .helpers import ROOT, run, tool

DOCKERFILE = ROOT / "Dockerfile"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instr in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if instr[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instr)
    return found


def hadolint(path: Path) -> tuple[int, list[dict[str, object]]]:
    result = run([tool("hadolint"), "--no-color", "--format", "json", str(path)])
    findings = json.loads(result.stdout or "[]")
    return result.returncode, findings


def test_hadolint_passes() -> None:
    code, findings = hadolint(DOCKERFILE)
    report = "\n".join(f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert code == 0 and not findings, f"hadolint found problems in the Dockerfile:\n{report}"


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above can fail: hadolint flags an unpinned base and a root user."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
    code, findings = hadolint(bad)
    assert code != 0
    assert {"DL3007", "DL3008"} <= {f["code"] for f in findings}


def test_multi_stage_with_a_cuda_default_and_a_cpu_build_argument() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "the Dockerfile must be multi-stage"
    build_args = [args for s in all_stages for word, args in s if word == "ARG"]
    assert 'TORCH_INDEX_URL=""' in build_args, "TORCH_INDEX_URL must default to empty (the CUDA build)"
    runs = " ".join(args for s in all_stages for word, args in s if word == "RUN")
    assert "--index-url" in runs and "TORCH_INDEX_URL" in runs
    assert "requirements.txt" in runs
    text = DOCKERFILE.read_text(encoding="utf-8")
    # No host name in the Dockerfile: the CPU index is a documented build argument.
    assert not re.search(r"https?://", text), "name no index host in the Dockerfile (the README does)"


def test_final_stage_runs_gunicorn_as_non_root_without_compilers() -> None:
    final = stages()[-1]
    words = [w for w, _ in final]
    runs = " ".join(args for w, args in final if w == "RUN")
    assert not re.search(r"\b(gcc|g\+\+|clang|build-essential|cmake|make)\b", runs), runs
    assert not any(w == "RUN" and "pip install" in a for w, a in final), "install in the build stage"
    assert any(w == "COPY" and "--from=" in a and "/opt/venv" in a for w, a in final)

    users = [args for w, args in final if w == "USER"]
    assert users, "the final stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    arg_values = dict(a.split("=", 1) for w, a in final if w == "ARG" and "=" in a)
    uid = arg_values.get(uid.strip("${}"), uid)
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root id (Kubernetes runAsNonRoot): {uid}"

    entrypoint = json.loads(next(a for w, a in final if w == "ENTRYPOINT"))
    assert entrypoint[0] == "gunicorn" and any(p.endswith("gunicorn.conf.py") for p in entrypoint)
    cmd = json.loads(next(a for w, a in final if w == "CMD"))
    assert cmd == ["embsvc.wsgi:app"]

    health = next(a for w, a in final if w == "HEALTHCHECK")
    assert "healthcheck.py" in health and "--start-period" in health
    volumes = " ".join(a for w, a in final if w == "VOLUME")
    assert "/app/BGE-M3" in volumes
    env = " ".join(a for w, a in final if w == "ENV")
    assert "MODEL_PATH=/app/BGE-M3" in env and "BIND=0.0.0.0:8000" in env
    assert "EXPOSE" in words


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent folder decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            matches = any(fnmatch.fnmatch(c.split("/")[-1], pattern[3:]) for c in candidates)
        else:
            matches = any(fnmatch.fnmatch(c, pattern) for c in candidates)
        if matches:
            excluded = not negate
    return excluded


def test_dockerignore_lets_in_what_is_copied_and_keeps_secrets_out() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for stage in stages():
        for word, args in stage:
            if word == "COPY" and "--from=" not in args:
                sources += [s for s in args.split() if not s.startswith("--")][:-1]
    assert sources
    for source in sources:
        probe = source.rstrip("/") + ("/__init__.py" if source.endswith("/") else "")
        assert not dockerignore_excludes(probe, patterns), f".dockerignore leaves out {source}"
    for secret in (
        ".env",
        ".venv/bin/python",
        "BGE-M3/model.safetensors",
        ".git/config",
        "tests/deploy/helpers.py",
        "embsvc/__pycache__/app.cpython-311.pyc",
    ):
        assert dockerignore_excludes(secret, patterns), f".dockerignore lets {secret} into the image"


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b'{"status": "ok"}' if self.path == "/health" else b"{}"
        self.send_response(type(self).status if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[http.server.ThreadingHTTPServer, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serve(server)
    yield server, handler
    server.shutdown()
    server.server_close()


def test_container_health_check_follows_bind_and_status(
    health_server: tuple[http.server.ThreadingHTTPServer, type[_Health]],
) -> None:
    import sys

    server, handler = health_server
    port = server.server_address[1]
    env = {"BIND": f"0.0.0.0:{port}", "PATH": "/usr/bin:/bin"}
    assert run([sys.executable, str(HEALTHCHECK)], env=env).returncode == 0
    handler.status = 503
    failed = run([sys.executable, str(HEALTHCHECK)], env=env)
    assert failed.returncode == 1 and "503" in failed.stderr
    server.shutdown()
    server.server_close()
    assert run([sys.executable, str(HEALTHCHECK)], env=env).returncode == 1


# -- supply chain: the base image by digest, the packages by hash ---------------------------------

LOCK = ROOT / "requirements.lock"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def load_check_lock() -> Any:
    return scripts.load("docker/check_lock.py")


def test_every_base_image_is_pinned_by_digest() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    bases = [args.split()[0] for stage in stages() for word, args in stage if word == "FROM"]
    assert bases
    for base in bases:
        image = defaults.get(base.strip("${}"), base) if base.startswith("$") else base
        assert DIGEST.search(image), f"FROM {base} ({image}) is not pinned by digest"
        assert image.startswith("python:3.11"), f"{image}: the lock is made for CPython 3.11"


def test_the_image_installs_only_the_hashed_lock() -> None:
    runs = " ".join(args for stage in stages() for word, args in stage if word == "RUN")
    assert "--require-hashes" in runs and "${REQUIREMENTS_LOCK}" in runs
    assert "check_lock.py /tmp/requirements.txt" in runs, "a stale lock stops the build"
    installs = re.findall(r"pip install[^&]*", runs)
    assert installs and all("--require-hashes" in i for i in installs), installs
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG REQUIREMENTS_LOCK=requirements\.lock$", text, re.MULTILINE)


def test_the_lock_holds_every_pin_with_hashes() -> None:
    check_lock = load_check_lock()
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    lock = LOCK.read_text(encoding="utf-8")
    assert check_lock.problems(requirements, lock) == []
    entries = check_lock.locked(lock)
    # Transitive dependencies too: torch's CUDA libraries, transformers' own needs.
    assert {"torch", "triton", "nvidia-cublas", "regex", "pyyaml"} <= entries.keys()
    assert len(entries) > len(check_lock.pins(requirements))
    for path in ROOT.glob("requirements*.lock"):
        assert check_lock.problems(requirements, path.read_text(encoding="utf-8")) == [], path.name


def test_check_lock_refuses_a_stale_or_unhashed_lock(tmp_path: Path) -> None:
    """The check above can fail: a pin moved on, a package left out, an entry without a hash."""
    check_lock = load_check_lock()
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    lock = LOCK.read_text(encoding="utf-8")
    assert check_lock.problems(requirements.replace("falcon==4.4.0", "falcon==4.5.0"), lock) == [
        "falcon==4.5.0 is locked at 4.4.0"]
    assert check_lock.problems(requirements + "left-pad==1.0\n", lock) == ["left-pad==1.0 is not in the lock"]
    unhashed = re.sub(r"(?m)^(orjson==\S+) \\\n(    --hash=\S+( \\)?\n)+", r"\1\n", lock)
    assert check_lock.problems(requirements, unhashed) == ["orjson has no sha256 hash"]
    # torch from the CPU wheel index carries a local label.
    cpu = lock.replace("torch==2.13.0 \\", "torch==2.13.0+cpu \\")
    assert check_lock.problems(requirements, cpu) == []
    # From the command line, as the image's build runs it.
    (tmp_path / "stale.lock").write_text(lock.replace("falcon==4.4.0", "falcon==4.3.0"))
    result = run([sys.executable, str(ROOT / "deploy" / "docker" / "check_lock.py"),
                  str(ROOT / "requirements.txt"), str(tmp_path / "stale.lock")])
    assert result.returncode == 1 and "falcon==4.4.0 is locked at 4.3.0" in result.stderr


# -- make audit -------------------------------------------------------------------------------------

FAKE_AUDIT = """#!/usr/bin/env bash
# Stands in for pip-audit: says what the advisory service would (FAKE_REACHABLE, FAKE_VULNERABLE).
echo "$@" >> "$FAKE_LOG"
lock="${@: -1}"
if [ "$FAKE_REACHABLE" != 1 ]; then
    echo "ERROR: Dependency not found on PyPI and could not be audited" >&2; exit 1
fi
if grep -q '^requests==2.19.0' "$lock" || [ "$FAKE_VULNERABLE" = 1 ]; then
    echo "requests 2.19.0 PYSEC-2018-28 2.20.0"; exit 1
fi
echo "No known vulnerabilities found"
"""


def audit(tmp_path: Path, *args: str, reachable: bool, vulnerable: bool = False) -> tuple[int, str, list[str]]:
    fake = tmp_path / "pip-audit"
    fake.write_text(FAKE_AUDIT)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {"PATH": "/usr/bin:/bin", "PIP_AUDIT": str(fake), "FAKE_LOG": str(log),
           "FAKE_REACHABLE": "1" if reachable else "0", "FAKE_VULNERABLE": "1" if vulnerable else "0"}
    result = run(["bash", str(ROOT / "deploy" / "audit.sh"), *args], env=env)
    return result.returncode, result.stdout + result.stderr, log.read_text().splitlines()


def test_make_audit_fails_on_a_vulnerability_and_on_unreachable_advisories(tmp_path: Path) -> None:
    code, output, calls = audit(tmp_path, reachable=True)
    assert code == 0, output
    assert any("--strict" in c and c.endswith("requirements.lock") for c in calls), calls
    assert audit(tmp_path, reachable=True, vulnerable=True)[0] == 1
    assert audit(tmp_path, reachable=False)[0] == 1, "an audit that checked nothing is no pass"


def test_make_test_audits_only_where_the_advisories_answer(tmp_path: Path) -> None:
    code, output, calls = audit(tmp_path, "--if-reachable", reachable=False)
    assert code == 0 and "SKIPPED" in output and "cannot be reached" in output, output
    assert not any(c.endswith("requirements.lock") for c in calls), "no audit of the lock without advisories"
    code, output, calls = audit(tmp_path, "--if-reachable", reachable=True, vulnerable=True)
    assert code == 1 and "SKIPPED" not in output, output
    code, output, calls = audit(tmp_path, "--if-reachable", reachable=True)
    assert code == 0 and any(c.endswith("requirements.lock") for c in calls), (output, calls)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^test: .*\baudit-if-reachable\b", makefile, re.MULTILINE)
    assert re.search(r"^audit: ", makefile, re.MULTILINE)
