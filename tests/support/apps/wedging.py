"""PetSage with a route that wedges a lock PetSage owns, and one that waits on a
dependency that never answers: the two sides of liveness."""

import logging
import os
import socket
import threading
from pathlib import Path

from flask import request

from petsage import create_app

# The lock /wedge holds for good: the log handler's, as a thread stuck writing a
# log line while holding it would.
WEDGED_LOCK = "petsage.logging.stdout"

app = create_app()


@app.get("/wedge")
def wedge() -> dict[str, int]:
    """Have a thread of this worker take the log handler's lock and never let it
    go; answer this worker's pid once it holds it."""
    handler = logging.getLogger("petsage").handlers[0]
    held = threading.Event()

    def hold() -> None:
        handler.acquire()
        held.set()
        threading.Event().wait()

    threading.Thread(target=hold, name="wedging", daemon=True).start()
    held.wait(10)
    return {"pid": os.getpid()}


@app.get("/upstream")
def upstream() -> dict[str, bool]:
    """Create a file named after this worker and thread in the folder
    ``?started=``, then ask the server at 127.0.0.1:``?port=`` and wait for its
    answer with no timeout, as a request to an upstream without one does."""
    Path(request.args["started"], f"{os.getpid()}-{threading.get_ident()}").touch()
    address = ("127.0.0.1", int(request.args["port"]))
    with socket.create_connection(address) as connection:
        connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
        answered = bool(connection.recv(1))
    return {"answered": answered}
