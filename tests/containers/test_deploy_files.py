"""deploy/: the Dockerfile and Kubernetes manifests, checked by tools made for them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from petsage import create_app
from petsage.config import load_settings
from tests.containers.manifests import MANIFESTS, container, manifest
from tests.support.dockerfile import image_environment, image_instructions
from tests.support.gunicorn_process import REPO_ROOT, GunicornFactory

BIN = Path(sys.executable).parent
DEPLOY = REPO_ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"


def run(*command: str) -> subprocess.CompletedProcess[str]:
    """Run a tool and keep its output."""
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_dockerfile_passes_hadolint() -> None:
    result = run(str(BIN / "hadolint"), str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_gunicorn_as_pid_1_as_a_non_root_user() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    assert 'CMD ["gunicorn"]' in lines
    assert "USER 10001:10001" in lines
    assert any(line.strip() == 'CMD ["petsage", "probe", "/livez"]' for line in lines)


def test_image_installs_the_runtime_pins_of_the_repository_root() -> None:
    # One list of runtime pins: the image installs the root requirements.txt, the file
    # the README's start command installs, and no other requirements file.
    [(source, target)] = [
        tuple(arguments.split())
        for arguments in image_instructions("COPY")
        if "requirements" in arguments
    ]
    assert source == "requirements.txt"
    assert f"pip install --no-cache-dir -r {target}" in image_instructions("RUN")
    assert not (DEPLOY / "requirements.txt").exists()


def test_manifests_pass_kubernetes_validate() -> None:
    result = run(str(BIN / "kubernetes-validate"), "--strict", *map(str, MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert {
        doc_kind
        for doc_kind in (
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
        )
    } == {
        document["kind"]
        for path in MANIFESTS
        for document in yaml.safe_load_all(path.read_text())
    }


def test_every_probe_path_is_in_the_openapi_document() -> None:
    document = create_app().test_client().get("/openapi.json").json
    assert isinstance(document, dict)
    probes = {
        name: container()[name]["httpGet"]["path"]
        for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": "/livez",
        "livenessProbe": "/livez",
        "readinessProbe": "/readyz",
    }
    assert set(probes.values()) <= set(document["paths"])
    ports = {
        container()[name]["httpGet"]["port"]
        for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    environment = {env["name"]: env.get("value", "") for env in container()["env"]}
    probe_port = load_settings(environment)["MANAGEMENT_BIND"].rpartition(":")[2]
    named = {port["name"]: str(port["containerPort"]) for port in container()["ports"]}
    assert {named[port] for port in ports} == {probe_port}


def test_prometheus_scrapes_the_management_port_and_the_service_hides_it() -> None:
    environment = {env["name"]: env.get("value", "") for env in container()["env"]}
    settings = load_settings(environment)
    public_port = settings["BIND"].rpartition(":")[2]
    management_port = settings["MANAGEMENT_BIND"].rpartition(":")[2]
    assert management_port and management_port != public_port
    assert not settings["PUBLIC_METRICS"]
    annotations = manifest("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == management_port
    assert annotations["prometheus.io/path"] == "/metrics"
    named = {port["name"]: str(port["containerPort"]) for port in container()["ports"]}
    exposed = {
        named[port["targetPort"]] for port in manifest("Service")["spec"]["ports"]
    }
    assert exposed == {public_port}


def test_probe_timings_are_the_recommended_ones() -> None:
    timings = {
        name: {
            key: container()[name].get(key)
            for key in ("periodSeconds", "timeoutSeconds", "failureThreshold")
        }
        for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert timings == {
        "startupProbe": {
            "periodSeconds": 2,
            "timeoutSeconds": None,
            "failureThreshold": 30,
        },
        "livenessProbe": {
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 6,
        },
        "readinessProbe": {
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
    }


def test_grace_period_covers_the_drain_delay_and_graceful_timeout() -> None:
    # The pod runs with the image's ENV, which its own env overrides.
    environment = {
        **image_environment(),
        **{env["name"]: env.get("value", "") for env in container()["env"]},
    }
    settings = load_settings(environment)
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    needed = settings["SHUTDOWN_DELAY"] + settings["GRACEFUL_TIMEOUT"]
    assert pod["terminationGracePeriodSeconds"] >= needed + 5
    assert container()["lifecycle"]["preStop"]["exec"]["command"] == [
        "petsage",
        "drain",
    ]


def test_pod_runs_unprivileged_with_resources() -> None:
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container()["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(container()["resources"]) == {"requests", "limits"}


def test_service_hpa_and_pdb_select_the_deployment() -> None:
    labels = manifest("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert manifest("Service")["spec"]["selector"] == labels
    assert manifest("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    target = manifest("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "petsage-backend")


@pytest.mark.slow
class TestProbeCommand:
    """``petsage probe`` as a Docker HEALTHCHECK runs it: no argument but the path."""

    def probe(self, state: Path, path: str = "/livez") -> int:
        """Run ``petsage probe`` with the instances of ``state``."""
        env = {**os.environ, "PETSAGE_STATE_DIR": str(state)}
        return subprocess.run(
            [str(BIN / "petsage"), "probe", path],
            env=env,
            capture_output=True,
            timeout=30,
        ).returncode

    def test_probe_passes_against_a_live_instance(
        self, start_gunicorn: GunicornFactory, tmp_path: Path
    ) -> None:
        start_gunicorn({"PETSAGE_STATE_DIR": str(tmp_path)})
        assert self.probe(tmp_path) == 0

    def test_probe_fails_when_the_path_fails(
        self, start_gunicorn: GunicornFactory, tmp_path: Path
    ) -> None:
        drain_file = tmp_path / "drain"
        state = tmp_path / "state"
        state.mkdir()
        start_gunicorn(
            {"PETSAGE_DRAIN_FILE": str(drain_file), "PETSAGE_STATE_DIR": str(state)}
        )
        drain_file.touch()
        assert self.probe(state, "/readyz") == 1

    def test_probe_fails_when_nothing_runs(self, tmp_path: Path) -> None:
        assert self.probe(tmp_path) == 1


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifests_are_single_documents(path: Path) -> None:
    assert len(list(yaml.safe_load_all(path.read_text()))) == 1
