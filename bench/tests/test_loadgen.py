"""wrk's output, parsed: units, optional lines, and incomplete output."""

import pytest

from bench.loadgen import WrkOutputError, parse_wrk, wrk_command

CLEAN = """\
Running 5s test @ http://127.0.0.1:40123/livez
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.61ms    9.02ms 113.89ms   89.61%
    Req/Sec     5.62k   610.33     6.87k    71.00%
  Latency Distribution
     50%  595.00us
     75%    7.80ms
     90%   16.74ms
     99%   41.50ms
  55931 requests in 5.00s, 9.23MB read
Requests/sec:  11183.61
Transfer/sec:      1.85MB
"""

WITH_ERRORS = """\
Running 1s test @ http://127.0.0.1:40123/readyz
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   401.12ms  120.00ms    1.99s    90.00%
    Req/Sec    20.00      5.00    30.00     70.00%
  Latency Distribution
     50%  350.00ms
     75%  400.00ms
     90%  500.00ms
     99%    1.50s
  40 requests in 1.00m, 8.00KB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 40
Requests/sec:      0.67
Transfer/sec:     136.53B
"""


def test_parses_a_clean_run_with_units() -> None:
    result = parse_wrk(CLEAN)
    assert result.requests == 55931
    assert result.duration_s == pytest.approx(5.0)
    assert result.requests_per_s == pytest.approx(11183.61)
    assert result.p50_ms == pytest.approx(0.595)
    assert result.p99_ms == pytest.approx(41.5)
    assert (result.non_2xx, result.socket_errors) == (0, 0)


def test_parses_errors_seconds_and_minutes() -> None:
    result = parse_wrk(WITH_ERRORS)
    assert result.duration_s == pytest.approx(60.0)
    assert result.p50_ms == pytest.approx(350.0)
    assert result.p99_ms == pytest.approx(1500.0)
    assert result.non_2xx == 40
    assert result.socket_errors == 10


def test_output_without_latency_distribution_is_an_error() -> None:
    without = "\n".join(
        line for line in CLEAN.splitlines() if "%" not in line or "Latency " in line
    )
    with pytest.raises(WrkOutputError, match="50th percentile"):
        parse_wrk(without)


def test_empty_output_is_an_error() -> None:
    with pytest.raises(WrkOutputError):
        parse_wrk("")


def test_command_has_latency_and_never_more_threads_than_connections() -> None:
    assert wrk_command("http://127.0.0.1:1/", 64, 5) == [
        "wrk",
        "-t2",
        "-c64",
        "-d5s",
        "--latency",
        "http://127.0.0.1:1/",
    ]
    assert wrk_command("http://127.0.0.1:1/", 1, 1)[1] == "-t1"
