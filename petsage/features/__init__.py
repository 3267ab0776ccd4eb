"""PetSage's features: packages with a blueprint, schemas, services and a README."""

from typing import Protocol

from flask_smorest import Blueprint

from petsage.features import smoke_test


class Feature(Protocol):
    """What the factory needs of a feature package."""

    bp: Blueprint
    TAG: dict[str, str]


# The factory registers these under /api/v1; a new feature is one more entry here.
FEATURES: tuple[Feature, ...] = (smoke_test,)
