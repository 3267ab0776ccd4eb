"""The management listener under load and hostile heads, against a real gunicorn.

Under load every worker's reader takes its share of the connections and leaves what
it cannot serve in the kernel's queue, so no probe is answered 503 for a queue that
another worker had room in; heads that can never be requests are refused with 400 at
once (petsage/serving/probe_listener.py).
"""

import http.client
import json
import shutil
import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.loadgen import run_wrk
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory
from tests.support.management import Instance
from tests.support.processes import wait_until
from tests.support.raw_http import HOSTILE_HEADS

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

SIMULTANEOUS = 400
ROUNDS = 4


@pytest.fixture
def instance(start_gunicorn: GunicornFactory) -> Instance:
    """PetSage with 5 workers and a management listener, ready: the tests assert
    that it stays ready, so its first check cycle must be published first."""
    started = Instance(start_gunicorn, {"PETSAGE_WORKERS": "5"})
    wait_until(lambda: started.management("/readyz").status == 200, 60.0, "/readyz 200")
    return started


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and keep the connection open for writing; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(data)
        chunks = []
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


@pytest.mark.parametrize("name", list(HOSTILE_HEADS))
def test_a_head_that_is_no_request_gets_400_problem_json(
    instance: Instance, name: str
) -> None:
    answer = exchange(instance.management_port, HOSTILE_HEADS[name])
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    assert status_line.split()[1] == "400", answer[:300]
    assert "Content-Type: application/problem+json" in fields
    assert json.loads(body)["status"] == 400
    # The listener keeps serving.
    assert instance.management("/readyz").status == 200


def readyz_status(port: int) -> int:
    """/readyz's status on a new connection (0 when no answer came)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


class KubeletProber:
    """A kubelet-style readiness prober: /readyz every 0.5 s with a 1 s timeout."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def __enter__(self) -> "KubeletProber":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _probe(self) -> None:
        while not self._stop.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            try:
                connection.request("GET", "/readyz")
                self.answers[str(connection.getresponse().status)] += 1
            except OSError as error:
                self.answers[type(error).__name__] += 1
            finally:
                connection.close()
            self._stop.wait(0.5)


@pytest.mark.fault
def test_simultaneous_requests_are_all_answered_ready(
    instance: Instance, fault_record: FaultRecorder
) -> None:
    assert instance.management("/readyz").status == 200
    statuses: Counter[int] = Counter()
    with (
        KubeletProber(instance.management_port) as prober,
        ThreadPoolExecutor(SIMULTANEOUS) as pool,
    ):
        for _ in range(ROUNDS):
            port = instance.management_port
            statuses.update(pool.map(readyz_status, [port] * SIMULTANEOUS))
    sent = SIMULTANEOUS * ROUNDS
    print(f"\n{sent} simultaneous /readyz: {dict(statuses)}; prober {prober.answers}")
    fault_record(
        fault="a burst of connections on the management listener",
        injected=f"{SIMULTANEOUS} simultaneous GET /readyz, {ROUNDS} rounds, 5 workers",
        load="a kubelet-style prober: /readyz every 0.5 s, 1 s timeout",
        sent=sent,
        failed=sent - statuses[200] - statuses[0],
        lost=statuses[0],
        recovery=f"prober: {sum(prober.answers.values())} probes,"
        f" {prober.answers['200']} answered 200",
    )
    assert statuses == Counter({200: sent})
    assert set(prober.answers) == {"200"}


@pytest.mark.fault
@pytest.mark.skipif(
    shutil.which("wrk") is None,
    reason="wrk is not installed (Debian: apt-get install -y wrk)",
)
def test_wrk_on_readyz_gets_no_answer_but_200(
    instance: Instance, fault_record: FaultRecorder
) -> None:
    assert instance.management("/readyz").status == 200
    url = f"http://127.0.0.1:{instance.management_port}/readyz"
    with KubeletProber(instance.management_port) as prober:
        result, _ = run_wrk(url, connections=100, duration_s=10)
    print(f"\nwrk -c100 10 s on /readyz: {result}; prober {prober.answers}")
    fault_record(
        fault="wrk on the management listener's /readyz",
        injected="wrk -t2 -c100 -d10s (5 workers)",
        load="a kubelet-style prober: /readyz every 0.5 s, 1 s timeout",
        sent=result.requests,
        failed=result.non_2xx,
        lost=result.socket_errors,
        recovery=f"p99 {result.p99_ms:.0f} ms; prober:"
        f" {sum(prober.answers.values())} probes, {prober.answers['200']} answered 200",
    )
    assert (result.non_2xx, result.socket_errors) == (0, 0)
    assert set(prober.answers) == {"200"}
