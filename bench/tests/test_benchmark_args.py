"""The command line's choice of candidates."""

import pytest

from bench.benchmark import parse_args
from bench.servers import CANDIDATES


def test_every_candidate_runs_by_default() -> None:
    assert parse_args([]).candidates == list(CANDIDATES)


def test_chosen_candidates_run_in_the_usual_order() -> None:
    args = parse_args(["--candidates", "bare_flask,petsage,bare_wsgi"])
    assert [c.key for c in args.candidates] == ["petsage", "bare_wsgi", "bare_flask"]


def test_an_unknown_candidate_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--candidates", "petsage,nginx"])
    assert "unknown candidates ['nginx']" in capsys.readouterr().err
