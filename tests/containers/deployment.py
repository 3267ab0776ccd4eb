"""deploy/kubernetes/deployment.yaml as `podman run` options, so tests cannot drift.

The pod's ports become free ports on 127.0.0.1 (the container shares the host's
network): every PETSAGE_*BIND whose value names a container port is rewritten to it.
"""

import re
from dataclasses import dataclass
from typing import Any

from tests.containers.manifests import container, manifest

# Kubernetes quantity suffixes, binary and decimal.
MEMORY_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "": 1,
}


def cpu_quantity(value: str | int | float) -> float:
    """A Kubernetes CPU quantity ("1", "250m", 0.5) in CPUs."""
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_quantity(value: str | int) -> int:
    """A Kubernetes memory quantity ("384Mi", "16Mi", "1G") in bytes."""
    match = re.fullmatch(r"(\d+)([KMG]i?|k)?", str(value))
    assert match, f"unsupported memory quantity {value!r}"
    return int(match.group(1)) * MEMORY_UNITS[match.group(2) or ""]


@dataclass(frozen=True)
class Probe:
    """A probe of the manifest: its HTTP path and the name of its port."""

    path: str
    port: str


@dataclass(frozen=True)
class Deployment:
    """What the manifest sets for PetSage's container and pod."""

    environment: dict[str, str]
    # Variables filled from a Secret (the test supplies their values).
    secrets: tuple[str, ...]
    ports: dict[str, int]
    cpus: float
    memory: int
    user: str
    read_only: bool
    no_new_privileges: bool
    dropped_capabilities: tuple[str, ...]
    tmpfs: tuple[str, ...]
    probes: dict[str, Probe]
    pre_stop: tuple[str, ...]
    grace_period: int
    # Where Prometheus scrapes: the container port and path of the pod annotations.
    scrape_port: int
    scrape_path: str

    def port_name(self, number: int) -> str:
        """The name of the container port ``number``."""
        [name] = [name for name, port in self.ports.items() if port == number]
        return name

    def bound_to(self, host_ports: dict[str, int]) -> dict[str, str]:
        """The manifest's environment with each bind moved to its host port."""
        environment = dict(self.environment)
        for name, value in self.environment.items():
            if not (name.startswith("PETSAGE_") and name.endswith("BIND")):
                continue
            port = int(value.rpartition(":")[2])
            environment[name] = f"127.0.0.1:{host_ports[self.port_name(port)]}"
        return environment

    def run_options(self) -> list[str]:
        """`podman run` options for the pod's and container's security and limits."""
        options = ["--user", self.user, "--cpus", f"{self.cpus:g}"]
        options += ["--memory", f"{self.memory}b"]
        options += [
            f"--cap-drop={capability}" for capability in self.dropped_capabilities
        ]
        options += [f"--tmpfs={mount}" for mount in self.tmpfs]
        if self.read_only:
            options.append("--read-only")
        if self.no_new_privileges:
            options += ["--security-opt", "no-new-privileges"]
        return options


def tmpfs_mounts(pod: dict[str, Any], petsage: dict[str, Any]) -> tuple[str, ...]:
    """The container's memory-backed emptyDir mounts as `--tmpfs` values."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = []
    for mount in petsage.get("volumeMounts", []):
        empty_dir = volumes[mount["name"]].get("emptyDir", {})
        assert empty_dir.get("medium") == "Memory", f"{mount['name']}: not a tmpfs"
        size = memory_quantity(empty_dir["sizeLimit"])
        mounts.append(f"{mount['mountPath']}:size={size}")
    return tuple(mounts)


def deployment() -> Deployment:
    """The Deployment's PetSage container, read from the manifest."""
    template = manifest("Deployment")["spec"]["template"]
    pod, petsage = template["spec"], container()
    security = {**pod.get("securityContext", {}), **petsage.get("securityContext", {})}
    limits = petsage["resources"]["limits"]
    annotations = template["metadata"]["annotations"]
    probes = {
        kind: Probe(petsage[kind]["httpGet"]["path"], petsage[kind]["httpGet"]["port"])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    return Deployment(
        environment={
            env["name"]: str(env["value"]) for env in petsage["env"] if "value" in env
        },
        secrets=tuple(env["name"] for env in petsage["env"] if "valueFrom" in env),
        ports={port["name"]: port["containerPort"] for port in petsage["ports"]},
        cpus=cpu_quantity(limits["cpu"]),
        memory=memory_quantity(limits["memory"]),
        user=f"{security['runAsUser']}:{security['runAsGroup']}",
        read_only=security["readOnlyRootFilesystem"],
        no_new_privileges=not security["allowPrivilegeEscalation"],
        dropped_capabilities=tuple(security["capabilities"]["drop"]),
        tmpfs=tmpfs_mounts(pod, petsage),
        probes=probes,
        pre_stop=tuple(petsage["lifecycle"]["preStop"]["exec"]["command"]),
        grace_period=pod["terminationGracePeriodSeconds"],
        scrape_port=int(annotations["prometheus.io/port"]),
        scrape_path=annotations["prometheus.io/path"],
    )
