"""``petsage_log_lines_dropped_total``: log lines the instance could not write out.

A process drops a line when its output stays unread for longer than its log buffer
holds (petsage.serving.log_output); each process counts its own, in its own metrics
file, and a scrape of any worker sums them, the master's included.
"""

import functools

from prometheus_client import Counter

NAME = "petsage_log_lines_dropped"
HELP = (
    "Log lines a process of the instance dropped because its output was not read fast"
    " enough (a stalled log reader): its buffer of PETSAGE_LOG_BUFFER_LINES lines was"
    " full."
)


@functools.cache
def dropped_log_lines() -> Counter:
    """This process's counter, made when first asked for.

    Each worker makes it as its app starts (petsage.metrics.Metrics), so that every
    scrape shows it from 0; the master only when it first drops a line, since the
    metrics directory does not exist yet when the master imports this.
    """
    return Counter(NAME, HELP, registry=None)
