"""deploy/: the Kubernetes manifests, one by kind, and their PetSage containers; the
services of the Compose file."""

from typing import Any

import yaml

from tests.support.gunicorn_process import REPO_ROOT

MANIFESTS = sorted((REPO_ROOT / "deploy" / "kubernetes").glob("*.yaml"))
COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.yaml"


def manifest(kind: str) -> dict[str, Any]:
    """The one manifest of ``kind``."""
    [found] = [
        document
        for path in MANIFESTS
        for document in yaml.safe_load_all(path.read_text())
        if document["kind"] == kind
    ]
    assert isinstance(found, dict)
    return found


def container() -> dict[str, Any]:
    """The PetSage container of the Deployment."""
    [petsage] = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(petsage, dict)
    return petsage


def literal_environment(petsage: dict[str, Any]) -> dict[str, str]:
    """The variables a manifest's container sets to a value (not from a Secret)."""
    return {env["name"]: str(env["value"]) for env in petsage["env"] if "value" in env}


def migration_container() -> dict[str, Any]:
    """The container of the Job that migrates the database."""
    [migrate] = manifest("Job")["spec"]["template"]["spec"]["containers"]
    assert isinstance(migrate, dict)
    return migrate


def compose_services() -> dict[str, dict[str, Any]]:
    """The services of deploy/compose.yaml."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert isinstance(services, dict)
    return services
