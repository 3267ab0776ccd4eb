"""Figures the container tests measure, printed at the end of the pytest run."""

# In the order measured; tests/conftest.py prints them in its terminal summary.
FIGURES: dict[str, str] = {}


def record_figure(name: str, value: str) -> None:
    """Keep ``value`` under ``name`` for the summary, and print it now (``-s``)."""
    FIGURES[name] = value
    print(f"\ncontainer figure: {name}: {value}")


def figure_lines() -> list[str]:
    """The recorded figures, one line each."""
    return [f"{name}: {value}" for name, value in FIGURES.items()]
