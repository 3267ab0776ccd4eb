"""The image of deploy/Dockerfile, built and run with Podman as Docker and Kubernetes
run it; deploy/compose.yaml run with podman-compose.

The image builds over a stand-in base made from Debian's packages (no image registry
is reachable here), with Debian's Python 3.11.2 instead of the official image's
3.11.7; docs/containers.md says which figures that affects. Containers share the
host's network and listen on free ports of 127.0.0.1; run options come from
deploy/kubernetes/deployment.yaml (tests/containers/deployment.py).
"""

import json
import math
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from petsage.config import load_settings
from tests.conftest import FaultRecorder
from tests.containers.deployment import Deployment, deployment
from tests.containers.figures import record_figure
from tests.containers.manifests import COMPOSE_FILE, compose_services
from tests.containers.podman import (
    HELPERS,
    IMAGE_TAG,
    LIMITS,
    NGINX_STANDIN_TAG,
    POSTGRES_STANDIN_TAG,
    STANDIN_BASE,
    Container,
    build,
    cannot_run,
    ensure_bridge_networks_run,
    ensure_podman_runs,
    inspect_image,
    podman,
)
from tests.support.dockerfile import DOCKERFILE, image_environment
from tests.support.gunicorn_process import REPO_ROOT, http_request
from tests.support.instances import DRAINING, LIVENESS
from tests.support.load import SMOKE_TEST, SMOKE_TEST_BODY, ClientLoad
from tests.support.management import free_port
from tests.support.processes import wait_until

# One pytest-xdist worker runs them all: they share the images their session
# fixtures build.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.long,  # two minutes in all, in one worker
    pytest.mark.container,
    pytest.mark.xdist_group("container"),
]

START_TIMEOUT = 30.0
# `docker stop`, `podman stop` and `docker compose down` send SIGKILL this long after
# SIGTERM unless told otherwise.
DEFAULT_STOP_TIMEOUT = 10
# A load balancer has taken a draining instance out this long before the drain ends.
BALANCER_MARGIN = 0.5
# A manifest's settings that the image's own Docker-sized ones replace when the
# container runs as `docker run` would, with the image's drain.
DRAIN_SETTINGS = ("PETSAGE_SHUTDOWN_DELAY", "PETSAGE_GRACEFUL_TIMEOUT")

ContainerFactory = Callable[..., Container]


@pytest.fixture(scope="session")
def image() -> str:
    """PetSage's image: deploy/Dockerfile, unchanged, over the stand-in base."""
    base_seconds = ensure_podman_runs()
    if base_seconds:
        record_figure("stand-in base built (mmdebstrap)", f"{base_seconds:.1f} s")
    started = time.monotonic()
    image_id = build(IMAGE_TAG, DOCKERFILE, REPO_ROOT, "--from", STANDIN_BASE)
    record_figure(
        "image built from deploy/Dockerfile (layer cache as found)",
        f"{time.monotonic() - started:.1f} s",
    )
    return image_id


@pytest.fixture(scope="session")
def plan() -> Deployment:
    """The manifest's PetSage container."""
    return deployment()


@pytest.fixture(scope="session")
def health_token() -> str:
    """The token the manifest takes from its Secret."""
    return secrets.token_urlsafe(16)


def manifest_environment(
    plan: Deployment, token: str, host_ports: dict[str, int]
) -> dict[str, str]:
    """The manifest's environment, its Secrets filled in, bound to ``host_ports``:
    the database an SQLite file on the pod's /tmp (the Compose test runs PostgreSQL)."""
    assert set(plan.secrets) == {"PETSAGE_HEALTH_TOKEN", "PETSAGE_DATABASE_URL"}
    return {
        **plan.bound_to(host_ports),
        "PETSAGE_HEALTH_TOKEN": token,
        "PETSAGE_DATABASE_URL": "sqlite:////tmp/petsage.sqlite3",
    }


def start(
    image: str,
    plan: Deployment,
    token: str,
    started: list[Container],
    *,
    without: tuple[str, ...] = (),
    cpus: float | None = None,
) -> Container:
    """Run the image as the manifest does, less the settings ``without`` names, and
    wait until its readiness probe passes."""
    host_ports = {name: free_port() for name in plan.ports}
    environment = manifest_environment(plan, token, host_ports)
    for name in without:
        del environment[name]
    options = plan.run_options()
    if cpus is not None:
        options[options.index("--cpus") + 1] = f"{cpus:g}"
    container = Container.run(image, host_ports, environment, options)
    started.append(container)
    readiness = plan.probes["readinessProbe"]
    container.wait_for(readiness.port, readiness.path, 200, START_TIMEOUT)
    return container


@pytest.fixture(scope="module")
def deployed(image: str, plan: Deployment, health_token: str) -> Iterator[Container]:
    """One container run as the manifest runs it, shared by the read-only checks."""
    started: list[Container] = []
    try:
        container = start(image, plan, health_token, started)
        ready = container.wait_for("management", "/readyz", 200, START_TIMEOUT)
        record_figure("start-up to ready (podman run to /readyz 200)", f"{ready:.2f} s")
        yield container
    finally:
        for container in started:
            container.remove()


@pytest.fixture
def start_container(
    image: str, plan: Deployment, health_token: str
) -> Iterator[ContainerFactory]:
    """Start containers of the image as the manifest does; all removed after."""
    started: list[Container] = []

    def factory(**options: object) -> Container:
        return start(image, plan, health_token, started, **options)  # type: ignore[arg-type]

    yield factory
    for container in started:
        container.remove()


def test_the_image_builds_over_the_standin_base_with_its_user_and_healthcheck(
    image: str,
) -> None:
    found = inspect_image(image)
    config = found["Config"]
    assert isinstance(config, dict)
    size = found["Size"]
    assert isinstance(size, int)
    base_size = inspect_image(STANDIN_BASE)["Size"]
    assert isinstance(base_size, int)
    record_figure(
        "image size (stand-in base, Debian's Python 3.11.2)",
        f"{size / 1e6:.0f} MB, of which the base {base_size / 1e6:.0f} MB",
    )
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["gunicorn"]
    # Podman lists the image's HEALTHCHECK beside its config.
    healthcheck = found["Healthcheck"]
    assert isinstance(healthcheck, dict)
    assert healthcheck["Test"] == ["CMD", "petsage", "probe", "/livez"]


def test_the_container_runs_read_only_as_the_manifests_user_without_capabilities(
    deployed: Container, plan: Deployment
) -> None:
    [master, *workers] = deployed.host_pids()
    status = Path(f"/proc/{master}/status").read_text()
    user, group = plan.user.split(":")
    assert re.search(rf"^Uid:\s+{user}\s", status, re.MULTILINE)
    assert re.search(rf"^Gid:\s+{group}\s", status, re.MULTILINE)
    assert re.search(r"^CapEff:\s+0+$", status, re.MULTILINE)
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE)
    assert workers, "gunicorn has no workers"
    written = deployed.execute("touch", "/app/written")
    assert written.returncode != 0
    assert "Read-only file system" in written.stderr
    assert deployed.execute("touch", "/tmp/written").returncode == 0


def test_the_smoke_test_and_every_probe_of_the_manifest_answer(
    deployed: Container, plan: Deployment
) -> None:
    smoke = deployed.request("http", SMOKE_TEST)
    assert smoke.status == 200
    assert json.loads(smoke.body) == SMOKE_TEST_BODY
    assert plan.probes["livenessProbe"].path == "/livez"
    for kind, probe in plan.probes.items():
        assert deployed.request(probe.port, probe.path).status == 200, kind


def test_health_shows_its_checks_to_the_token_only(
    deployed: Container, health_token: str
) -> None:
    with_token = deployed.request(
        "http", "/health", {"Authorization": f"Bearer {health_token}"}
    )
    without = deployed.request("http", "/health")
    assert with_token.status == without.status == 200
    assert b'"checks"' in with_token.body
    assert b'"checks"' not in without.body


def test_metrics_are_served_where_prometheus_scrapes_them(
    deployed: Container, plan: Deployment, health_token: str
) -> None:
    port = plan.port_name(plan.scrape_port)
    scrape = deployed.request(
        port, plan.scrape_path, {"Authorization": f"Bearer {health_token}"}
    )
    assert port == "management"
    assert scrape.status == 200
    assert scrape.headers["Content-Type"].startswith("text/plain")
    assert b"# TYPE petsage_" in scrape.body
    assert deployed.request("http", plan.scrape_path).status == 404


def run_healthcheck(container: Container) -> int:
    """`podman healthcheck run` as the runtime judges health: unhealthy only after
    the healthcheck's Retries failures in a row, and a run past its timeout (3 s) on
    a busy machine is one failure. The runs it took to pass."""
    config = container.inspect()["Config"]
    assert isinstance(config, dict)
    retries = config["Healthcheck"]["Retries"]
    output = ""
    for run in range(1, retries + 1):
        checked = podman("healthcheck", "run", container.name, check=False)
        if checked.returncode == 0:
            return run
        output = checked.stdout + checked.stderr
    raise AssertionError(f"{retries} healthchecks in a row failed: {output}")


def test_the_images_healthcheck_passes(deployed: Container) -> None:
    runs = run_healthcheck(deployed)
    record_figure("podman healthcheck run: runs to the first pass", str(runs))
    assert deployed.state("Health")["Status"] == "healthy"  # type: ignore[index]


def cgroup_memory_peak(pid: int) -> int:
    """The most memory the cgroup of ``pid`` has used (what its limit applies to)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return int(
                Path(f"/sys/fs/cgroup/memory{path}/memory.max_usage_in_bytes")
                .read_text()
                .strip()
            )
        if (
            hierarchy == "0"
            and (peak := Path(f"/sys/fs/cgroup{path}/memory.peak")).exists()
        ):
            return int(peak.read_text().strip())
    raise AssertionError(f"no memory cgroup for pid {pid}")


def resident_memory(pids: list[int]) -> int:
    """The sum of the processes' resident set sizes, in bytes (shared pages counted
    once per process: an upper bound)."""
    total = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
        assert match, status
        total += int(match.group(1)) * 1024
    return total


def test_memory_stays_inside_the_manifests_limit_under_load(
    deployed: Container, plan: Deployment
) -> None:
    paths = (SMOKE_TEST, "/", "/livez", "/openapi.json")
    with ClientLoad(deployed.ports["http"], threads=4, paths=paths) as load:
        time.sleep(3.0)
        load.wait_for_requests(100)
        rss = resident_memory(deployed.host_pids())
    peak = cgroup_memory_peak(deployed.host_pids()[0])
    mib = 2**20
    record_figure(
        "memory under 3 s of load (4 threads, 2 workers x 4 threads)",
        f"RSS {rss / mib:.0f} MiB (sum of processes), cgroup peak {peak / mib:.0f} MiB,"
        f" limit {plan.memory / mib:.0f} MiB; {load.sent} requests",
    )
    assert load.failed == []
    assert rss < plan.memory
    assert peak < plan.memory


def test_prestop_drain_fails_readiness_at_once_and_keeps_serving(
    start_container: ContainerFactory, plan: Deployment
) -> None:
    container = start_container()
    readiness = plan.probes["readinessProbe"]
    with ClientLoad(container.ports["http"], threads=2) as load:
        time.sleep(0.5)
        load.phase("draining")
        drained = container.execute(*plan.pre_stop)
        # The kubelet sends SIGTERM once the hook has returned: readiness fails by then.
        readiness_status = container.request(readiness.port, readiness.path).status
        time.sleep(1.0)
        load.wait_for_requests(10, phase="draining")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert "draining; readiness fails now" in drained.stdout
    assert readiness_status == 503
    assert load.failed == []
    assert container.request("http", SMOKE_TEST).status == 200


@dataclass(frozen=True)
class Stop:
    """What stopping a container under load showed."""

    load: ClientLoad
    # The answer to the first readiness probe sent after the drain was logged, and
    # the seconds from the stop command to that answer.
    readiness: int
    to_503: float
    stopped_after: float
    exit_code: int
    # What the stop command wrote: podman says so when it resorts to SIGKILL.
    output: str


def stop_under_load(
    container: Container,
    stop: list[str],
    delay: float,
    readiness_port: str,
    readiness_path: str,
) -> Stop:
    """Stop ``container`` with ``stop`` while clients send requests until the drain
    is nearly over; requests once readiness failed are in the "draining" phase."""
    with ClientLoad(
        container.ports["http"], threads=4, keep_alive_threads=1, pause=0.01
    ) as load:
        time.sleep(0.5)
        terminated = time.monotonic()
        stopping = subprocess.Popen(
            ["podman", *stop, container.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_until(lambda: DRAINING in container.logs(), LIVENESS, "the drain")
        readiness = container.request(readiness_port, readiness_path).status
        to_503 = time.monotonic() - terminated
        load.phase("draining")
        time.sleep(max(0.0, terminated + delay - BALANCER_MARGIN - time.monotonic()))
    output, _ = stopping.communicate(timeout=delay + 120)
    stopped_after = time.monotonic() - terminated
    exit_code = container.state("ExitCode")
    assert isinstance(exit_code, int)
    return Stop(load, readiness, to_503, stopped_after, exit_code, output)


def assert_stopped_gracefully(
    stopped: Stop, container: Container, delay: float
) -> None:
    """Readiness failed at once and nothing failed while draining, for ``delay``
    seconds; then the container exited by itself (0), before any SIGKILL (137)."""
    log = container.logs()
    assert f"{DRAINING}; shutting down in {delay:.1f} s" in log
    assert stopped.readiness == 503
    draining = stopped.load.phases["draining"]
    assert draining.sent > 0, "no request was sent while draining"
    assert stopped.load.failed == []
    assert stopped.exit_code == 0, (
        f"exit {stopped.exit_code} after {stopped.stopped_after:.1f} s:\n{log}"
    )
    assert "SIGKILL" not in stopped.output, stopped.output
    assert delay <= stopped.stopped_after


@pytest.mark.fault
def test_podman_stop_with_its_default_timeout_drains_and_exits_0(
    start_container: ContainerFactory, plan: Deployment, fault_record: FaultRecorder
) -> None:
    container = start_container(without=DRAIN_SETTINGS)
    delay = float(image_environment()["PETSAGE_SHUTDOWN_DELAY"])
    readiness = plan.probes["readinessProbe"]
    stopped = stop_under_load(
        container, ["stop"], delay, readiness.port, readiness.path
    )
    fault_record(
        fault="podman stop (Docker's 10 s)",
        injected=f"`podman stop` (SIGTERM, SIGKILL after {DEFAULT_STOP_TIMEOUT} s) to"
        " the image run with"
        " the manifest's options and the image's own drain settings",
        load="4 client threads (1 keep-alive), smoke test, until the drain ends",
        **stopped.load.total.counts(),
        recovery=f"exit {stopped.exit_code} {stopped.stopped_after:.1f} s after"
        " SIGTERM",
    )
    record_figure(
        "podman stop, default 10 s timeout",
        f"readiness {stopped.readiness} {stopped.to_503:.2f} s after the command,"
        f" exit {stopped.exit_code} after {stopped.stopped_after:.1f} s"
        f" (drain {delay:g} s)",
    )
    assert_stopped_gracefully(stopped, container, delay)


@pytest.mark.fault
def test_podman_stop_with_the_manifests_grace_period_drains_and_exits_0(
    start_container: ContainerFactory, plan: Deployment, fault_record: FaultRecorder
) -> None:
    container = start_container()
    delay = float(plan.environment["PETSAGE_SHUTDOWN_DELAY"])
    readiness = plan.probes["readinessProbe"]
    stopped = stop_under_load(
        container,
        ["stop", "--time", str(plan.grace_period)],
        delay,
        readiness.port,
        readiness.path,
    )
    fault_record(
        fault="podman stop --time (the pod's grace period)",
        injected=f"`podman stop --time {plan.grace_period}` (terminationGracePeriod"
        "Seconds) to the image run as deploy/kubernetes/deployment.yaml runs it",
        load="4 client threads (1 keep-alive), smoke test, until the drain ends",
        **stopped.load.total.counts(),
        recovery=f"exit {stopped.exit_code} {stopped.stopped_after:.1f} s after"
        " SIGTERM",
    )
    record_figure(
        f"podman stop --time {plan.grace_period} (manifest)",
        f"readiness {stopped.readiness} {stopped.to_503:.2f} s after the command,"
        f" exit {stopped.exit_code} after {stopped.stopped_after:.1f} s"
        f" (drain {delay:g} s)",
    )
    assert_stopped_gracefully(stopped, container, delay)


@pytest.mark.parametrize("cpus", [0.5, 2])
def test_the_default_worker_count_follows_the_cpu_limit(
    start_container: ContainerFactory, cpus: float
) -> None:
    # The manifest names its worker count; without it, the rule decides.
    container = start_container(without=("PETSAGE_WORKERS",), cpus=cpus)
    usable = min(math.ceil(cpus), len(os.sched_getaffinity(0)))
    expected = 2 * usable + 1
    deadline = time.monotonic() + START_TIMEOUT
    while container.logs().count("Booting worker") < expected:
        assert time.monotonic() < deadline, container.logs()
        time.sleep(0.1)
    time.sleep(1.0)  # time enough for more workers to appear
    processes = podman("top", container.name, "pid", "ppid").stdout.split()[2:]
    log = container.logs()
    # The master's other child, its health checker, serves no request.
    checkers = set(re.findall(r"Health checker started \(pid (\d+)\)", log))
    workers = [
        pid
        for pid, ppid in zip(processes[::2], processes[1::2], strict=True)
        if ppid == "1" and pid not in checkers
    ]
    [reason] = re.findall(r'"message": ?"(\d+ workers?: [^"]*)"', log)
    record_figure(f"workers under --cpus {cpus:g}", f"{len(workers)} ({reason})")
    assert len(workers) == expected, log
    assert log.count("Booting worker") == expected
    assert reason.startswith(f"{expected} workers: 2 x {usable} CPU")


def seconds(duration: str) -> float:
    """A Compose duration such as "10s" or "1m30s" in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def test_composes_stop_grace_period_covers_the_drain_and_graceful_stop() -> None:
    petsage = compose_services()["petsage"]
    environment = petsage["environment"]
    assert isinstance(environment, dict)
    settings = load_settings(
        {**image_environment(), **{k: str(v) for k, v in environment.items() if v}}
    )
    needed = settings["SHUTDOWN_DELAY"] + settings["GRACEFUL_TIMEOUT"]
    assert seconds(str(petsage["stop_grace_period"])) >= needed + 1


@pytest.fixture(scope="session")
def nginx_standin(image: str) -> str:
    """An image standing in for the official nginx one: Debian's nginx over the base."""
    return build(
        NGINX_STANDIN_TAG,
        HELPERS / "nginx-standin.Containerfile",
        HELPERS,
        "--build-arg",
        f"BASE={STANDIN_BASE}",
    )


@pytest.fixture(scope="session")
def postgres_standin(image: str) -> str:
    """An image standing in for the official postgres one: Debian's PostgreSQL."""
    return build(
        POSTGRES_STANDIN_TAG,
        HELPERS / "postgres-standin.Containerfile",
        HELPERS,
        "--build-arg",
        f"BASE={STANDIN_BASE}",
    )


@pytest.fixture
def compose(
    image: str, nginx_standin: str, postgres_standin: str, health_token: str
) -> Iterator[tuple[Callable[..., subprocess.CompletedProcess[str]], str, int]]:
    """podman-compose on deploy/compose.yaml with the stand-ins, published on a free
    port of 127.0.0.1; taken down after, the database's volume with it."""
    if shutil.which("podman-compose") is None:
        cannot_run("podman-compose is not installed (apt-get install podman-compose)")
    ensure_bridge_networks_run()
    project = f"petsage-test-{uuid.uuid4().hex[:12]}"
    port = free_port()
    environment = {
        **os.environ,
        "PETSAGE_IMAGE": image,
        "PETSAGE_NGINX_IMAGE": nginx_standin,
        "PETSAGE_POSTGRES_IMAGE": postgres_standin,
        "PETSAGE_POSTGRES_PASSWORD": secrets.token_urlsafe(16),
        "PETSAGE_PUBLISH": f"127.0.0.1:{port}",
        "PETSAGE_HEALTH_TOKEN": health_token,
    }

    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *("podman-compose", "-p", project, "-f", str(COMPOSE_FILE)),
                *("--podman-run-args", " ".join(LIMITS), *arguments),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=environment,
            cwd=REPO_ROOT,
        )

    try:
        yield run, project, port
    finally:
        run("down", "--volumes")
        podman("network", "rm", "--force", f"{project}_default", check=False)


def postgres_is_healthy(name: str) -> bool:
    """Whether the postgres container's health check passes now."""
    return podman("healthcheck", "run", name, check=False).returncode == 0


def has_exited(name: str) -> bool:
    """Whether the container has run to its end."""
    return Container(name, {}).state("Status") == "exited"


def up_in_order(
    run: Callable[..., subprocess.CompletedProcess[str]], project: str
) -> subprocess.CompletedProcess[str]:
    """`up` in the order Docker Compose keeps: podman-compose 1.0.3 starts every
    service at once, ignoring depends_on's conditions, so postgres is started until
    healthy and migrate until it exits before the rest (which runs migrate again)."""
    for service, done in (("postgres", postgres_is_healthy), ("migrate", has_exited)):
        up = run("up", "--detach", "--no-build", service)
        assert up.returncode == 0, up.stdout + up.stderr
        name = f"{project}_{service}_1"
        wait_until(partial(done, name), START_TIMEOUT, f"compose's {service} done")
    migrate = Container(f"{project}_migrate_1", {})
    assert migrate.state("ExitCode") == 0, migrate.logs()
    assert "petsage: database upgraded to" in migrate.logs()
    return run("up", "--detach", "--no-build")


def assert_healthy_on_the_migrated_schema(project: str, port: int, token: str) -> None:
    """/health through nginx shows its checks to the token, all passing; in the
    PetSage container, its database is PostgreSQL, at the migrations' head."""
    health = http_request(port, "GET", "/health", {"Authorization": f"Bearer {token}"})
    assert health.status == 200 and b'"checks"' in health.body
    assert json.loads(health.body)["status"] == "pass", health.body
    petsage = Container(f"{project}_petsage_1", {})
    url = petsage.execute("printenv", "PETSAGE_DATABASE_URL").stdout
    assert url.startswith("postgresql://petsage:"), "not PostgreSQL"
    current = petsage.execute("petsage", "db", "current")
    assert current.returncode == 0, current.stdout + current.stderr
    assert current.stdout.rstrip().endswith("(head)"), current.stdout


def test_compose_serves_through_nginx_and_stops_cleanly(
    compose: tuple[Callable[..., subprocess.CompletedProcess[str]], str, int],
    health_token: str,
) -> None:
    run, project, port = compose
    started = time.monotonic()
    up = up_in_order(run, project)
    assert up.returncode == 0, up.stdout + up.stderr
    deadline = started + START_TIMEOUT
    while True:
        try:
            smoke = http_request(port, "GET", SMOKE_TEST)
            if smoke.status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, up.stdout + up.stderr
        time.sleep(0.1)
    record_figure(
        "compose up to the smoke test answering through nginx",
        f"{time.monotonic() - started:.1f} s",
    )
    assert json.loads(smoke.body) == SMOKE_TEST_BODY
    # The smoke test answers before the first check cycle ends: wait for readiness.
    wait_until(
        lambda: http_request(port, "GET", "/readyz").status == 200,
        LIVENESS,
        "/readyz 200 through nginx",
    )
    assert http_request(port, "GET", "/metrics").status == 404
    assert_healthy_on_the_migrated_schema(project, port, health_token)
    for service in ("petsage", "nginx"):
        run_healthcheck(Container(f"{project}_{service}_1", {}))
    grace = seconds(str(compose_services()["petsage"]["stop_grace_period"]))
    # podman-compose 1.0.3 ignores stop_grace_period: give its value as Compose would.
    stopping = time.monotonic()
    stopped = run("stop", "--timeout", f"{grace:g}")
    stopped_after = time.monotonic() - stopping
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    petsage = Container(f"{project}_petsage_1", {})
    record_figure(
        "compose stop",
        f"petsage exit {petsage.state('ExitCode')}, {stopped_after:.1f} s for all",
    )
    assert petsage.state("ExitCode") == 0
    assert "Draining: readiness fails now" in petsage.logs()
    assert Container(f"{project}_nginx_1", {}).state("ExitCode") == 0
