"""deploy/: the Dockerfile and Kubernetes manifests, checked by tools made for them."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from petsage import create_app
from petsage.config import load_settings
from tests.containers.manifests import (
    MANIFESTS,
    compose_services,
    container,
    literal_environment,
    manifest,
    migration_container,
)
from tests.support.dockerfile import image_environment, image_instructions
from tests.support.gunicorn_process import REPO_ROOT, GunicornFactory

BIN = Path(sys.executable).parent
DEPLOY = REPO_ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
MIGRATE = ["petsage", "db", "upgrade"]
DATABASE_URL = "PETSAGE_DATABASE_URL"
MIGRATION_SERVICES = ("petsage", "migrate", "postgres")
# A value Compose takes from the shell or .env, refusing to start without it.
REQUIRED_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+):\?[^}]+\}")


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
            "Job",
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
    environment = literal_environment(container())
    probe_port = load_settings(environment)["MANAGEMENT_BIND"].rpartition(":")[2]
    named = {port["name"]: str(port["containerPort"]) for port in container()["ports"]}
    assert {named[port] for port in ports} == {probe_port}


def test_prometheus_scrapes_the_management_port_and_the_service_hides_it() -> None:
    environment = literal_environment(container())
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
        **literal_environment(container()),
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


def test_compose_migrates_postgresql_before_petsage_starts() -> None:
    services = compose_services()
    petsage, migrate, postgres = (services[name] for name in MIGRATION_SERVICES)
    assert migrate["image"] == petsage["image"]
    assert migrate["command"] == MIGRATE
    assert migrate.get("restart", "no") == "no"
    assert petsage["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert postgres["healthcheck"]["test"][0] == "CMD"
    assert any(
        volume.endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"]
    )
    assert petsage["environment"][DATABASE_URL] == migrate["environment"][DATABASE_URL]
    url = make_url(
        REQUIRED_VARIABLE.sub("sample", petsage["environment"][DATABASE_URL])
    )
    assert (url.get_backend_name(), url.host) == ("postgresql", "postgres")
    assert url.database == postgres["environment"]["POSTGRES_DB"]
    assert url.username == postgres["environment"]["POSTGRES_USER"]


def test_compose_runs_read_only_with_no_password_in_the_file() -> None:
    services = compose_services()
    for name in MIGRATION_SERVICES:
        assert services[name]["read_only"] is True, name
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    required = REQUIRED_VARIABLE.fullmatch(password)
    assert required, f"POSTGRES_PASSWORD: {password!r} is not ${{NAME:?message}}"
    url = services["petsage"]["environment"][DATABASE_URL]
    assert make_url(REQUIRED_VARIABLE.sub("sample", url)).password == "sample"
    assert REQUIRED_VARIABLE.findall(url) == [required["name"]]


def environment_entry(petsage: dict[str, object], name: str) -> dict[str, object]:
    """The ``env`` entry of ``name`` in a container of a manifest."""
    entries = petsage["env"]
    assert isinstance(entries, list)
    [entry] = [entry for entry in entries if entry["name"] == name]
    assert isinstance(entry, dict)
    return entry


def test_kubernetes_migrates_in_a_job_before_the_two_replicas_roll_out() -> None:
    job = manifest("Job")
    pod = job["spec"]["template"]["spec"]
    migrate = migration_container()
    assert migrate["command"] == MIGRATE
    assert migrate["image"] == container()["image"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert job["spec"]["backoffLimit"] >= 1
    assert manifest("Deployment")["spec"]["replicas"] == 2
    url = environment_entry(container(), DATABASE_URL)
    assert environment_entry(migrate, DATABASE_URL) == url
    reference = url["valueFrom"]["secretKeyRef"]  # type: ignore[index]
    assert not reference.get("optional", False)


def test_every_read_only_petsage_container_names_its_database() -> None:
    # The image's default SQLite file lies under its root: read-only, it cannot be
    # written, so every shipped PetSage container names a database elsewhere.
    services = compose_services()
    for name in ("petsage", "migrate"):
        assert (
            services[name]["read_only"] and services[name]["environment"][DATABASE_URL]
        )
    for petsage in (container(), migration_container()):
        assert petsage["securityContext"]["readOnlyRootFilesystem"] is True
        assert environment_entry(petsage, DATABASE_URL)["valueFrom"]
