"""The management listener: probes, /metrics and health details, off the public port.

gunicorn's gthread worker hands each connection to its pool of PETSAGE_THREADS
threads; when every thread serves a slow request, a probe waits in line, and a kubelet
with a 1 s timeout would count a busy instance as dead. With PETSAGE_MANAGEMENT_BIND
(or its old name PETSAGE_PROBE_BIND) set, each worker also serves the health endpoints
and /metrics on that address from a thread of its own. All workers bind it with
SO_REUSEPORT, so the kernel spreads requests over them, and a probe never waits for
the application's threads. Operational data lives here, as with Spring Boot
Actuator's management port: keep this address off the internet.
"""

import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from werkzeug.exceptions import NotFound

from petsage.errors import problem_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def not_found(environ: "WSGIEnvironment", start_response: "StartResponse") -> Any:
    """Everything the management listener does not serve: a 404 problem."""
    return problem_response(NotFound())(environ, start_response)


class ProbeRequestHandler(BaseHTTPRequestHandler):
    """Turns one HTTP request into a call of the management WSGI app."""

    server_version = "petsage"
    sys_version = ""
    # A client that trickles its request is dropped instead of holding a thread.
    timeout = 5
    server: "ProbeServer"

    def serve(self) -> None:
        """Answer with the management app."""
        path, _, query = self.path.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "PATH_INFO": unquote(path, errors="replace"),
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
            "SERVER_PROTOCOL": self.request_version,
            "wsgi.url_scheme": "http",
        }
        for name in ("Authorization", "X-Request-ID", "X-Forwarded-For"):
            # Repeated headers are joined as gunicorn joins them, so a proxy's own
            # X-Forwarded-For header stays the last entry whatever a client sent.
            values = self.headers.get_all(name)
            if values:
                environ["HTTP_" + name.upper().replace("-", "_")] = ",".join(values)
        answer: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
            answer.extend((status, headers))

        body = b"".join(self.server.app(environ, start_response))
        status, headers = answer
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # http.server looks the method up by these names.
    do_GET = do_HEAD = do_OPTIONS = serve  # noqa: N815
    do_POST = do_PUT = do_PATCH = do_DELETE = serve  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes are not logged."""


class ProbeServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The management listener of one worker; every worker binds the same address."""

    allow_reuse_address = True
    allow_reuse_port = True
    daemon_threads = True
    app: "WSGIApplication"


def start_probe_listener(bind: str, app: "WSGIApplication") -> ProbeServer:
    """Serve ``app`` (the management app) on ``bind`` (HOST:PORT) from a thread."""
    host, _, port = bind.rpartition(":")
    server = ProbeServer((host, int(port)), ProbeRequestHandler)
    server.app = app
    threading.Thread(
        target=server.serve_forever, name="petsage-probe-listener", daemon=True
    ).start()
    return server
