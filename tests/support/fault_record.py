"""The fault record: one row per injected fault, for ``docs/reliability.md``.

Every fault test calls the ``fault_record`` fixture with what it injected, the load
during it, and what became of the requests. The row is printed (``pytest -s`` shows
it) and, when ``PETSAGE_FAULT_RECORD`` names a file, appended to it as a JSON line;
``tests/faults/run`` renders those lines into ``docs/reliability.md``.
"""

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

RECORD_VARIABLE = "PETSAGE_FAULT_RECORD"
# The fixture's type: call it with the fields of FaultRow but ``test``.
FaultRecorder = Callable[..., None]


@dataclass(frozen=True)
class FaultRow:
    """What one fault test injected and what became of the requests meanwhile.

    ``failed``: requests answered wrongly (a status or body other than expected);
    ``lost``: requests that got no answer at all (reset, refused, timed out).
    """

    fault: str
    injected: str
    load: str
    sent: int
    failed: int
    lost: int
    recovery: str
    test: str = ""


def record_fault(row: FaultRow) -> None:
    """Print ``row`` and append it to the record file when one is named."""
    print(f"\nfault record: {json.dumps(asdict(row))}")
    path = os.environ.get(RECORD_VARIABLE)
    if path:
        with open(path, "a", encoding="utf-8") as record:
            record.write(json.dumps(asdict(row)) + "\n")
