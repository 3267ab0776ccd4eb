"""The metrics an instance keeps and serves: its files under the directory given as
PROMETHEUS_MULTIPROC_DIR, and the samples of a scrape."""

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def metric_files(directory: Path) -> list[Path]:
    """Every metrics file under ``directory``, in whichever instance's directory."""
    return sorted(directory.glob("**/*.db"))


def samples(body: bytes) -> dict[tuple[str, ...], float]:
    """The text format's samples, keyed by name and label values (by label name)."""
    return {
        (sample.name, *(sample.labels[name] for name in sorted(sample.labels))): (
            sample.value
        )
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
