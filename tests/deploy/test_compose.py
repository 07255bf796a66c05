"""Both compose files pass `docker-compose config` and wire what the README says."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import ROOT, run, shm_needed, size_bytes, tool

DUMMY_ENV = {"API_TOKEN": "dummy-token-for-compose-config", "EMBSVC_IMAGE": "example.invalid/embsvc:test"}


def compose_config(tmp_path: Path, name: str, *args: str) -> dict[str, Any]:
    """`docker-compose -f NAME config` in a copy of the project with .env.example as .env.

    A copy, so that a developer's own .env (and its token) is neither read nor
    printed, and so that the documented first step (cp .env.example .env) is
    what gets checked.
    """
    shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    (tmp_path / "deploy" / "nginx").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "nginx" / "nginx.conf", tmp_path / "deploy" / "nginx" / "nginx.conf")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env |= DUMMY_ENV
    result = run([tool("docker-compose"), *args, "-f", name, "config"], cwd=tmp_path, env=env)
    assert result.returncode == 0, f"docker-compose config failed for {name}:\n{result.stderr}"
    warnings = [line for line in result.stderr.splitlines() if "WARN" in line.upper()]
    assert not warnings, f"docker-compose config warns about {name}:\n" + "\n".join(warnings)
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict) and config.get("services"), result.stdout
    return config


def test_config_rejects_a_broken_file(tmp_path: Path) -> None:
    """The checks below can fail: docker-compose config exits non-zero on an unknown key."""
    (tmp_path / "docker-compose.yaml").write_text("services:\n  web:\n    image: x\n    restartt: always\n")
    result = run([tool("docker-compose"), "config"], cwd=tmp_path)
    assert result.returncode != 0
    assert "restartt" in result.stderr


def port_mapping(entry: str | dict[str, Any]) -> dict[str, Any]:
    """A published port as compose v2 prints it (long form); compose v1 prints "[ip:]published:target"."""
    if isinstance(entry, dict):
        return entry
    *host, target = str(entry).split(":")
    mapping: dict[str, Any] = {"target": int(target.split("/")[0])}
    if len(host) == 2:
        mapping["host_ip"] = host[0]
    if host:
        mapping["published"] = host[-1]
    return mapping


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def check_server_service(service: dict[str, Any]) -> None:
    assert service["environment"]["API_TOKEN"], ".env must reach the container (env_file)"
    assert service["environment"]["MODEL_PATH"] == "/app/BGE-M3"
    assert any(v.split(":")[1] == "/app/BGE-M3" for v in service["volumes"]), service["volumes"]
    assert size_bytes(service["shm_size"]) >= shm_needed(), (
        f"/dev/shm of {service['shm_size']} is less than a full queue of the longest requests needs "
        f"({shm_needed() / 2**30:.1f} GiB; Docker's default is 64 MiB)")
    health = service["healthcheck"]
    assert "/app/deploy/docker/healthcheck.py" in health["test"]
    assert health.get("start_period"), "loading the model must not count as unhealthy"


def test_dev_compose_builds_from_source_with_a_gpu(tmp_path: Path) -> None:
    services = compose_config(tmp_path, "docker-compose.yaml")["services"]
    service = services["embsvc"]
    assert not service.get("profiles"), "plain `docker compose up` starts the GPU service"
    assert services["embsvc-cpu"]["profiles"] == ["cpu"], "the CPU variant stays behind its profile"
    assert service["build"]["context"] == str(tmp_path)
    assert "TORCH_INDEX_URL" in service["build"]["args"]
    assert gpu_devices(service) and gpu_devices(service)[0]["capabilities"] == ["gpu"]
    assert port_mapping(service["ports"][0])["target"] == 8000
    check_server_service(service)


@pytest.mark.parametrize("profile", [[], ["--profile", "cpu"]], ids=["gpu", "cpu"])
def test_dev_compose_publishes_on_loopback_only(tmp_path: Path, profile: list[str]) -> None:
    """The bare server (plain HTTP, no per-client limits) is for this machine, not the network."""
    services = compose_config(tmp_path, "docker-compose.yaml", *profile)["services"]
    for name, service in services.items():
        assert [port_mapping(p).get("host_ip") for p in service["ports"]] == ["127.0.0.1"], (name, service["ports"])


def test_dev_compose_cpu_profile(tmp_path: Path) -> None:
    services = compose_config(tmp_path, "docker-compose.yaml", "--profile", "cpu")["services"]
    cpu = services["embsvc-cpu"]
    assert not gpu_devices(cpu)
    assert cpu["environment"]["DEVICE"] == "cpu"
    check_server_service(cpu)


def upstream_servers() -> list[str]:
    text = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    block = re.search(r"# BEGIN upstream-servers\n(.*?)# END upstream-servers", text, re.DOTALL)
    assert block is not None
    return re.findall(r"^\s*server\s+(\S+)", block.group(1), re.MULTILINE)


def test_prod_compose_runs_replicas_behind_nginx(tmp_path: Path) -> None:
    services = compose_config(tmp_path, "docker-compose.prod.yaml")["services"]
    replicas = {name: s for name, s in services.items() if name != "nginx"}
    assert len(replicas) >= 2, "several replicas behind nginx"

    gpus = []
    for name, service in replicas.items():
        assert service["image"] == DUMMY_ENV["EMBSVC_IMAGE"], "the published image, from EMBSVC_IMAGE"
        assert "build" not in service
        assert service["restart"] in ("always", "unless-stopped")
        assert service["deploy"]["resources"]["limits"]["memory"]
        assert "ports" not in service, f"{name}: only nginx is published"
        devices = gpu_devices(service)
        assert len(devices) == 1 and len(devices[0]["device_ids"]) == 1, f"{name}: one GPU per replica"
        gpus.append(devices[0]["device_ids"][0])
        check_server_service(service)
    assert len(set(gpus)) == len(gpus), f"replicas share a GPU by default: {gpus}"

    nginx = services["nginx"]
    assert nginx["restart"] in ("always", "unless-stopped")
    assert nginx["deploy"]["resources"]["limits"]["memory"]
    assert sorted(port_mapping(p)["target"] for p in nginx["ports"]) == [80, 443], "HTTPS, and port 80 for its redirect"
    tls_mounts = [v for v in nginx["volumes"] if v.split(":")[1] == "/etc/nginx/tls"]
    assert len(tls_mounts) == 1 and tls_mounts[0].endswith(":ro"), nginx["volumes"]
    conf = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    assert "ssl_certificate /etc/nginx/tls/tls.crt;" in conf and "ssl_certificate_key /etc/nginx/tls/tls.key;" in conf
    assert any(v.startswith(f"{tmp_path}/deploy/nginx/nginx.conf:/etc/nginx/nginx.conf") for v in nginx["volumes"])
    assert nginx["healthcheck"]["test"]
    assert set(nginx["depends_on"]) == set(replicas)
    image = nginx["image"]
    version = re.search(r":(\d+)\.(\d+)", image)
    assert version and (int(version[1]), int(version[2])) >= (1, 27), (
        f"{image}: the 'resolve' upstream servers need nginx 1.27.3 or newer"
    )
    assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"{image}: pin the default image by digest"

    # Every replica is an upstream server of nginx, and nothing else is.
    assert sorted(s.rsplit(":", 1)[0] for s in upstream_servers()) == sorted(replicas)


def test_prod_compose_needs_the_image_name(tmp_path: Path) -> None:
    shutil.copy(ROOT / "docker-compose.prod.yaml", tmp_path / "docker-compose.prod.yaml")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    env = {k: v for k, v in os.environ.items() if k != "EMBSVC_IMAGE"}
    result = run([tool("docker-compose"), "-f", "docker-compose.prod.yaml", "config"], cwd=tmp_path, env=env)
    assert result.returncode != 0 and "EMBSVC_IMAGE" in result.stderr


@pytest.mark.parametrize("name", ["docker-compose.yaml", "docker-compose.prod.yaml"])
def test_compose_file_names_no_secret(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    assert not re.search(r"API_TOKEN\s*[:=]\s*\S", text), f"{name}: the token comes from .env only"
