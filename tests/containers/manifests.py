"""deploy/kubernetes/: its manifests, one by kind, and the PetSage container."""

from typing import Any

import yaml

from tests.support.gunicorn_process import REPO_ROOT

MANIFESTS = sorted((REPO_ROOT / "deploy" / "kubernetes").glob("*.yaml"))


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
