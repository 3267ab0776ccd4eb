"""The smoke_test feature: a public end-to-end check for deploy pipelines."""

from petsage.features.smoke_test.blueprint import TAG, bp

__all__ = ["TAG", "bp"]
