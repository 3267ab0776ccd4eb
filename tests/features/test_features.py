"""petsage/features: every package there is a feature, registered under /api/v1."""

import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

import petsage.features
from petsage import API_PREFIX
from petsage.features import FEATURES, NotAFeature, load_feature


def feature_packages() -> list[str]:
    """The packages under petsage/features, by name."""
    return sorted(
        module.name
        for module in pkgutil.iter_modules(petsage.features.__path__)
        if module.ispkg
    )


def test_every_package_is_a_feature_in_the_order_of_their_names() -> None:
    assert [feature.bp.name for feature in FEATURES] == feature_packages()


def test_every_features_routes_are_under_api_v1(app: Flask) -> None:
    names = {feature.bp.name for feature in FEATURES}
    routes = [
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.split(".")[0] in names
    ]
    assert routes
    assert all(route.startswith(f"{API_PREFIX}/") for route in routes), routes


def test_every_features_tag_is_listed_in_the_document(app: Flask) -> None:
    document = app.test_client().get("/openapi.json").json
    assert isinstance(document, dict)
    listed = [tag["name"] for tag in document["tags"]]
    assert all(feature.TAG["name"] in listed for feature in FEATURES)


@pytest.fixture
def stray_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder searched for petsage/features' packages, to put a stray one in."""
    monkeypatch.setattr(
        petsage.features, "__path__", [*petsage.features.__path__, str(tmp_path)]
    )
    yield tmp_path
    for name in ("no_blueprint", "no_tag"):
        sys.modules.pop(f"petsage.features.{name}", None)


@pytest.mark.parametrize(
    ("name", "source", "missing"),
    [
        ("no_blueprint", 'TAG = {"name": "n", "description": "d"}\n', "exports no bp"),
        (
            "no_tag",
            "from flask_smorest import Blueprint\nbp = Blueprint('no_tag', __name__)\n",
            "exports no TAG",
        ),
    ],
)
def test_a_package_that_is_not_a_feature_is_refused_saying_what_it_lacks(
    stray_package: Path, name: str, source: str, missing: str
) -> None:
    (stray_package / name).mkdir()
    (stray_package / name / "__init__.py").write_text(source)
    with pytest.raises(NotAFeature, match=f"petsage/features/{name}/ .*{missing}"):
        load_feature(name)
