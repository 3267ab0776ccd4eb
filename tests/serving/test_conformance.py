"""One conformance table for both listeners of one instance.

Every request shape of the hostile-input suite, and the shapes HTTP/1.x leaves to a
server's judgement, go as bytes to the public port (gunicorn's own parser) and to the
management listener (petsage.serving.probe_listener) of ONE real gunicorn. Both must
answer alike: the same status, the same version in the status line (HTTP/1.0 for an
HTTP/1.0 request gunicorn answers), the same problem document where both refuse. The
only differences allowed are the rows of the table in
docs/operators/management-listener.md, which this module reads: each has a test of
its own below, which shows the difference and nothing more.
"""

import re
import select
import time
from collections.abc import Iterator, Sequence

import pytest

from tests.support.gunicorn_process import REPO_ROOT, GunicornServer
from tests.support.management import Instance, get
from tests.support.raw_http import (
    CLIENT_HELLO,
    HOSTILE_HEADS,
    HOSTILE_REQUESTS,
    Answer,
    AnswerReader,
    connect,
)

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

DOCS = REPO_ROOT / "docs" / "operators" / "management-listener.md"
# Paths both listeners serve (/metrics on the public port with
# PETSAGE_PUBLIC_METRICS=true), and one that neither does.
PATHS = ["/readyz", "/livez", "/health", "/metrics", "/no-such-thing"]
READY_TIMEOUT = 30.0
PIPELINED_PAIR = (
    b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
)


def get_request(
    target: bytes, fields: bytes = b"Host: x\r\n", version: bytes = b"1.1"
) -> bytes:
    """``GET target`` with ``fields`` (each ending in CRLF)."""
    return b"GET " + target + b" HTTP/" + version + b"\r\n" + fields + b"\r\n"


SHAPES = {
    **{f"GET {path}": get_request(path.encode()) for path in PATHS},
    "HEAD /readyz": b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
    "OPTIONS /readyz": b"OPTIONS /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST /readyz": b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "an unknown method": b"BREW /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
    "a lowercase method": b"get /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
    "an empty line before the request": b"\r\n" + get_request(b"/readyz"),
    # HAProxy's `option httpchk GET /readyz` sends no Host.
    "HTTP/1.0 without Host": get_request(b"/readyz", b"", b"1.0"),
    "HTTP/1.0 with Host": get_request(b"/livez", b"Host: x\r\n", b"1.0"),
    "HTTP/1.0 asking keep-alive": get_request(
        b"/readyz", b"Connection: keep-alive\r\n", b"1.0"
    ),
    "HTTP/1.0 to an unknown path": get_request(b"/no-such-thing", b"", b"1.0"),
    "HTTP/1.1 without Host": get_request(b"/readyz", b""),
    "HTTP/2.0 in the request line": get_request(b"/readyz", version=b"2.0"),
    # RFC 9112, section 3.2.2: a server MUST accept the absolute form.
    "absolute form": get_request(b"http://x/readyz"),
    "absolute form with a query": get_request(b"http://x/health?verbose"),
    "OPTIONS *": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET *": get_request(b"*"),
    "authority form": get_request(b"x:80"),
    "a 9 KB target": get_request(b"/readyz?" + b"a" * 9_000),
    "a 100 KB target": get_request(b"/readyz?" + b"a" * 100_000),
    "two equal Content-Length fields": get_request(
        b"/readyz", b"Host: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n"
    ),
    "Content-Length and chunked": get_request(
        b"/readyz", b"Host: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
    ),
    "a header continued on the next line (obs-fold)": get_request(
        b"/readyz", b"Host: x\r\nX-A: a\r\n b\r\n"
    ),
    "Transfer-Encoding: xchunked": get_request(
        b"/readyz", b"Host: x\r\nTransfer-Encoding: xchunked\r\n"
    ),
    "chunked on HTTP/1.0": get_request(
        b"/readyz", b"Transfer-Encoding: chunked\r\n", b"1.0"
    )
    + b"0\r\n\r\n",
    "chunked with an empty body": get_request(
        b"/readyz", b"Host: x\r\nTransfer-Encoding: chunked\r\n"
    )
    + b"0\r\n\r\n",
    "a NUL in the target": get_request(b"/readyz\x00"),
    "a control byte in a field value": get_request(
        b"/readyz", b"Host: x\r\nX-A: a\x01b\r\n"
    ),
    "DEL in a field value": get_request(b"/readyz", b"Host: x\r\nX-A: a\x7fb\r\n"),
    "a bare CR in a field value": get_request(b"/readyz", b"Host: x\r\nX-A: a\rb\r\n"),
    "bare LF line ends": b"GET /readyz HTTP/1.1\nHost: x\n\n",
    "non-ASCII in the target": get_request("/readyz/\u00e9".encode()),
    "non-ASCII in a field value": get_request(
        b"/readyz", "Host: x\r\nX-A: \u00e9\r\n".encode()
    ),
    "non-ASCII in a field name": get_request(
        b"/readyz", "Host: x\r\nX-\u00e9: a\r\n".encode()
    ),
    "an underscore in a field name": get_request(b"/readyz", b"Host: x\r\nX_A: a\r\n"),
    "a space before the colon": get_request(b"/readyz", b"Host: x\r\nX-A : a\r\n"),
    "Expect: 100-continue": get_request(
        b"/readyz", b"Host: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n"
    ),
    "an unknown expectation": get_request(b"/readyz", b"Host: x\r\nExpect: tea\r\n"),
    **HOSTILE_REQUESTS,
    **HOSTILE_HEADS,
    "a pipelined pair": PIPELINED_PAIR,
}


def documented_differences() -> dict[str, str]:
    """The allowed differences the operators' page lists: row -> difference."""
    lines = DOCS.read_text().splitlines()
    [start] = [
        number
        for number, line in enumerate(lines)
        if re.fullmatch(r"\| *row of the table *\| *difference *\|.*", line)
    ]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        row, difference, *_ = (cell.strip() for cell in line.strip("|").split("|"))
        rows[row.strip("`")] = difference
    return rows


# The rows that may differ, each shown by its own test below.
ALLOWED = {
    "a TLS ClientHello": "refused at once",
    "a pipelined pair": "one request per connection",
    "HTTP/1.0 asking keep-alive": "one request per connection",
}
COMPARED = [name for name in SHAPES if name not in ALLOWED]


@pytest.fixture(scope="module")
def instance() -> Iterator[Instance]:
    """One PetSage with a management listener, /metrics on both listeners, ready."""
    started: list[GunicornServer] = []

    def start(
        env: dict[str, str], app: str | None = None, args: Sequence[str] = ()
    ) -> GunicornServer:
        started.append(GunicornServer.start(env, app, args))
        return started[-1]

    try:
        instance = Instance(start, PUBLIC_METRICS="true")
        # /readyz is 503 until the first checks ran: wait, so that both listeners
        # read the same verdict.
        for port in (instance.port, instance.management_port):
            wait_until_ready(port)
        yield instance
    finally:
        for server in started:
            server.stop()
            server.log_path.unlink(missing_ok=True)


def wait_until_ready(port: int) -> None:
    """Ask /readyz until it answers 200, for at most READY_TIMEOUT seconds."""
    deadline = time.monotonic() + READY_TIMEOUT
    while get(port, "/readyz").status != 200:
        assert time.monotonic() < deadline, f"/readyz on port {port} is not 200"
        time.sleep(0.05)


def final_answer(reader: AnswerReader, head_request: bool) -> Answer | None:
    """The next answer that is not an interim (1xx) one."""
    answer = reader.next(head_request)
    while answer is not None and answer.status < 200:
        answer = reader.next(head_request)
    return answer


def first_answer(port: int, request: bytes) -> Answer | None:
    """Send ``request`` on a new connection; the first final answer."""
    with connect(port) as connection:
        connection.sendall(request)
        return final_answer(AnswerReader(connection), request.startswith(b"HEAD "))


def request_version(request: bytes) -> str:
    """The version the request line names."""
    line = request.removeprefix(b"\r\n").split(b"\r\n", 1)[0]
    return line.rsplit(b" ", 1)[-1].decode("latin-1")


def refused_by_the_parser(answer: Answer) -> bool:
    """Whether gunicorn's parser refused the request: its refusal is written with a
    fixed head (gunicorn.util.write_error), HTTP/1.1 and no Server field, before any
    version is known; an answer of the application names gunicorn as its server."""
    return answer.header("Server") is None


@pytest.mark.parametrize("name", COMPARED)
def test_both_listeners_answer_alike(instance: Instance, name: str) -> None:
    request = SHAPES[name]
    public = first_answer(instance.port, request)
    management = first_answer(instance.management_port, request)
    assert public is not None, "the public port gave no answer"
    assert management is not None, "the management listener gave no answer"
    shown = (
        f"public {public.version} {public.status},"
        f" management {management.version} {management.status}"
    )
    assert management.status == public.status, shown
    assert management.version == public.version, shown
    if request_version(request) == "HTTP/1.0" and not refused_by_the_parser(public):
        assert public.version == "HTTP/1.0", shown
        assert management.header("Connection") == public.header("Connection") == "close"
    if public.status >= 400 and not request.startswith(b"HEAD "):
        assert public.problem() is not None, public
        assert management.problem() == public.problem()


def test_a_tls_client_hello_is_refused_at_once_where_the_public_port_waits(
    instance: Instance,
) -> None:
    with (
        connect(instance.port) as public,
        connect(instance.management_port) as management,
    ):
        public.sendall(CLIENT_HELLO)
        management.sendall(CLIENT_HELLO)
        refused = AnswerReader(management).next()
        assert refused is not None and refused.status == 400
        # The public port has had the hello as long as that answer took: it still
        # waits for the end of a request line ...
        assert select.select([public], [], [], 0)[0] == []
        # ... and refuses the same way once it has one.
        public.sendall(b"\r\n")
        answered = AnswerReader(public).next()
        assert answered is not None and answered.status == 400
        assert refused.problem() == answered.problem()
        assert refused.problem() is not None


def test_a_pipelined_second_request_is_answered_on_a_new_connection(
    instance: Instance,
) -> None:
    with connect(instance.port) as connection:
        connection.sendall(PIPELINED_PAIR)
        reader = AnswerReader(connection)
        public = [reader.next(), reader.next()]
    with connect(instance.management_port) as connection:
        connection.sendall(PIPELINED_PAIR)
        reader = AnswerReader(connection)
        first = reader.next()
        assert first is not None and first.header("Connection") == "close"
        assert reader.ended(), "the management listener answered a second request"
    second = first_answer(
        instance.management_port, PIPELINED_PAIR.partition(b"\r\n\r\n")[2]
    )
    assert [answer and answer.status for answer in public] == [200, 200]
    assert second is not None
    assert (first.status, second.status) == (200, 200)
    assert first.version == second.version == "HTTP/1.1"


def test_an_http_10_keep_alive_is_answered_and_closed(instance: Instance) -> None:
    request = SHAPES["HTTP/1.0 asking keep-alive"]
    with connect(instance.port) as connection:
        connection.sendall(request)
        public = AnswerReader(connection).next()
    with connect(instance.management_port) as connection:
        connection.sendall(request)
        reader = AnswerReader(connection)
        management = reader.next()
        assert reader.ended()
    assert public is not None and management is not None
    assert (public.version, public.status) == ("HTTP/1.0", 200)
    assert public.header("Connection") == "keep-alive"
    assert (management.version, management.status) == ("HTTP/1.0", 200)
    assert management.header("Connection") == "close"


def test_the_allowed_differences_are_the_documented_ones() -> None:
    assert documented_differences() == ALLOWED
