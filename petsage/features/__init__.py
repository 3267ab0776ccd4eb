"""PetSage's features: packages with a blueprint, schemas, services and a README.

Every package in this folder is a feature, and the factory registers each under
/api/v1, in the order of their names: adding one (``tools/new-feature NAME``) or
removing one edits no list. A package that does not export ``bp`` (a flask-smorest
Blueprint) and ``TAG`` (its OpenAPI tag) stops the application with one line saying so.
"""

import importlib
import pkgutil
from typing import Protocol, cast

from flask_smorest import Blueprint


class Feature(Protocol):
    """What the factory needs of a feature package."""

    bp: Blueprint
    TAG: dict[str, str]


class NotAFeature(Exception):
    """A package under petsage.features that does not export what a feature must."""


def load_feature(name: str) -> Feature:
    """Import the feature package ``name``, checking that it exports ``bp`` and
    ``TAG``."""
    package = importlib.import_module(f"{__name__}.{name}")
    if not isinstance(getattr(package, "bp", None), Blueprint):
        raise NotAFeature(
            f"petsage/features/{name}/ is not a feature: its __init__.py exports no"
            " bp (a flask_smorest.Blueprint)"
        )
    tag = getattr(package, "TAG", None)
    if not (isinstance(tag, dict) and tag.get("name") and tag.get("description")):
        raise NotAFeature(
            f"petsage/features/{name}/ is not a feature: its __init__.py exports no"
            ' TAG with a "name" and a "description"'
        )
    return cast(Feature, package)


def discover_features() -> tuple[Feature, ...]:
    """Every package in this folder, loaded, by name."""
    names = sorted(
        module.name for module in pkgutil.iter_modules(__path__) if module.ispkg
    )
    return tuple(load_feature(name) for name in names)


# The factory registers these under /api/v1.
FEATURES: tuple[Feature, ...] = discover_features()
