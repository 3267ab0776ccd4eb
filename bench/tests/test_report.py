"""The report's observability rows: the targets' figures and the access line's row."""

from bench.apps import SMOKE_TEST_PATH
from bench.model import BARE_WSGI_MICRO, METRICS_ONLY, UNLOGGED_PATH, Target
from bench.report import _decomposition, _micro_table, _targets_table


def test_figures_show_their_unit_and_ratios_do_not() -> None:
    lines = _targets_table(
        [
            Target("Observability", "access line", 18.3, 25.0, unit="us"),
            Target("Observability", "smoke / bare Flask", 1.124, 1.1),
        ]
    )
    assert lines[2] == (
        "| Observability: access line | 18.3 us | <= 25 us"
        " | PASS, 27% under the limit |"
    )
    assert lines[3] == (
        "| Observability: smoke / bare Flask | 1.12 | <= 1.1 | MISS by 2% |"
    )


def test_the_access_line_has_its_own_row_in_the_breakdown() -> None:
    pooled = {
        ("bare_wsgi", SMOKE_TEST_PATH): 230.0,
        ("bare_wsgi", UNLOGGED_PATH): 180.0,
        ("bare_flask", SMOKE_TEST_PATH): 300.0,
    }
    lines = _decomposition(
        pooled, [{"name": "bare Flask route", "median_us": 40.0}], [16]
    )
    [row] = [line for line in lines if line.startswith("| gunicorn's JSON access line")]
    assert [cell.strip() for cell in row.split("|")[2:5]] == ["50", "", "50"]
    [flask] = [line for line in lines if line.startswith("| bare Flask |")]
    assert flask == "| bare Flask | 300 | 180 | 50 | 40.0 | 30 |"


def test_the_request_metrics_rows_are_differences() -> None:
    micro = [
        {"name": BARE_WSGI_MICRO, "median_us": 0.5, "stdev_us": 0.0},
        {"name": METRICS_ONLY, "median_us": 8.0, "stdev_us": 0.1},
        {"name": "bare Flask route", "median_us": 40.0, "stdev_us": 1.0},
        {"name": f"PetSage {SMOKE_TEST_PATH}", "median_us": 60.0, "stdev_us": 1.0},
        {
            "name": f"PetSage {SMOKE_TEST_PATH}, metrics off",
            "median_us": 51.0,
            "stdev_us": 1.0,
        },
    ]
    lines = _micro_table(micro)
    assert lines[-2].startswith("| request metrics alone:")
    assert lines[-2].endswith("| 7.5 | | |")
    assert lines[-1].endswith("| 9.0 | | |")
