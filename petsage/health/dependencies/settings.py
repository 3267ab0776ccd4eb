"""The two dependency settings, read: their ``name=URL`` entries made dependencies, and
an entry PetSage cannot use refused in one line that says which entry and what is wrong.

``petsage.config`` keeps the settings as text: it is the lowest layer and knows no
kind of dependency. ``dependencies_from`` reads them, called when an app's health is
made and by the gunicorn master right after it loads the settings, so that a bad entry
stops the start before any worker forks.

A URL may hold a password, so a refusal never shows one: it names an entry by its
name, or, when that cannot be read with certainty (a comma left unescaped in a
password cuts the password in two), by its place in the setting.
"""

import functools
import importlib
import re
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from petsage.config import PASSWORD_FILE, Refused, Setting, setting_named
from petsage.health.dependencies.entry import Dependency
from petsage.health.dependencies.schemes import DATABASE, SCHEMES, Driver
from petsage.health.state import new_health

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
NAMES = "1 to 63 of a-z, 0-9, - and _, the first a letter or digit"
# How a URL begins: a piece of an entry that does not is no URL (a comma left
# unescaped cut it off its beginning), and its text may be a password's.
URL_START = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)
EXAMPLE = "db=tcp://db.internal:5432"


class Dependencies(NamedTuple):
    """The dependencies the settings name: those readiness requires, and the rest."""

    critical: tuple[Dependency, ...]
    optional: tuple[Dependency, ...]


def dependencies_from(settings: Mapping[str, Any]) -> Dependencies:
    """The dependencies ``settings`` name (``load_settings``'s, or an app's config).

    Raises ``ConfigError``, one line naming the setting, the entry and what is wrong.
    """
    critical_setting = setting_named("CRITICAL_DEPENDENCIES")
    optional_setting = setting_named("OPTIONAL_DEPENDENCIES")
    critical = read(critical_setting, settings)
    taken = dict.fromkeys(
        (dependency.name for dependency in critical), critical_setting
    )
    optional = read(optional_setting, settings, taken)
    return Dependencies(critical, optional)


def read(
    setting: Setting,
    settings: Mapping[str, Any],
    taken: Mapping[str, Setting] | None = None,
) -> tuple[Dependency, ...]:
    """The dependencies of one setting; ``taken`` names already given elsewhere."""
    try:
        return parse_dependencies(settings[setting.key], taken)
    except Refused as reason:
        raise setting.invalid(str(reason)) from None


def parse_dependencies(
    raw: str, taken: Mapping[str, Setting] | None = None
) -> tuple[Dependency, ...]:
    """``name=URL`` entries, comma-separated: unique names, none of PetSage's own
    (nor one in ``taken``), URLs of a known scheme that its driver accepts.

    Credentials in a URL are percent-encoded (RFC 3986) and decoded before use: a
    comma is written %2C (a bare one ends the entry), "#" %23, "/" %2F, "%" %25.
    Raises ``Refused`` for the first entry PetSage cannot use. Every entry is read
    as ``name=URL`` before any URL is checked: a comma left unescaped breaks the
    entry after it, which is what the refusal must be about.
    """
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    dependencies: list[Dependency] = []
    for entry in entries:
        dependency = read_entry(entry, dependencies)
        name_is_free(dependency.name, dependencies, taken or {})
        dependencies.append(dependency)
    for dependency in dependencies:
        check_url(dependency)
    return tuple(dependencies)


def read_entry(entry: str, earlier: list[Dependency]) -> Dependency:
    """``entry`` as a dependency, when it reads as ``name=URL`` with a valid name."""
    name, separator, url = (part.strip() for part in entry.partition("="))
    if earlier:
        # It may be the tail of the entry before, cut by a comma: its text may be a
        # password's, so it is named by its place.
        place = f"the entry after {earlier[-1].name}"
        hint = "a comma in a URL is written %2C"
    else:
        place, hint = "the first entry", f"expected name=URL, e.g. {EXAMPLE}"
    if not separator or "://" in name:
        raise Refused(f"{place} has no name=: {hint}")
    if not URL_START.match(url):
        raise Refused(f"{place} has no URL (scheme://...) after its name=: {hint}")
    if not NAME.fullmatch(name):
        # Shown: it stands before "=" and a URL's beginning, where no secret goes.
        raise Refused(f"{name!r} is not a valid name: expected {NAMES}")
    return Dependency(name, url)


def name_is_free(
    name: str, earlier: list[Dependency], taken: Mapping[str, Setting]
) -> None:
    """Refuse ``name`` if an earlier entry, another setting or PetSage has it."""
    reserved = reserved_names()
    if name in reserved:
        raise Refused(
            f"{name} is the name of one of PetSage's own health items"
            f" ({', '.join(sorted(reserved))}): expected another name"
        )
    if any(dependency.name == name for dependency in earlier):
        raise Refused(f"{name} is named twice: expected unique names")
    if name in taken:
        raise Refused(
            f"{name} is named in {taken[name].env_var} already: expected unique names"
        )


@functools.cache
def reserved_names() -> frozenset[str]:
    """The names of PetSage's own health items, which no dependency may take: the
    checks every app has, the database's, and what the probes weigh besides the
    checks."""
    return new_health(1.0, None).names | {DATABASE}


def check_url(dependency: Dependency) -> None:
    """Refuse a URL of a scheme PetSage does not check, or that its check could not
    use: a bare "#", no port or host where one is needed, a driver's refusal."""
    name = dependency.name
    try:
        parts = urlsplit(dependency.url)
    except ValueError:  # a "[" without its "]"
        raise Refused(f"{name}: its URL's host cannot be read") from None
    scheme = SCHEMES.get(parts.scheme)
    if scheme is None:
        raise Refused(
            f"{name}: {parts.scheme}:// is not a kind of dependency PetSage checks:"
            f" expected one of {', '.join(SCHEMES)}"
        )
    # A fragment is an unencoded "#", as in a password: the host seen would be wrong.
    if parts.fragment:
        raise Refused(
            f"{name}: a bare # ends its URL there: a # in a URL is written %23"
        )
    try:
        port = parts.port
    except ValueError:
        raise Refused(
            f"{name}: its URL's port is not a number from 0 to 65535"
        ) from None
    if scheme.needs_port and port is None:
        raise Refused(
            f"{name}: a {scheme.name}:// URL needs a port: expected"
            f" {scheme.name}://HOST:PORT"
        )
    if scheme.driver is not None:
        check_driver_url(dependency, scheme.driver)
    if scheme.needs_host and not parts.hostname:
        raise Refused(f"{name}: a {scheme.name}:// URL needs a host")


def check_driver_url(dependency: Dependency, driver: Driver) -> None:
    """Refuse a datastore URL whose driver is missing, or that its driver refuses."""
    scheme = dependency.scheme
    try:
        module = importlib.import_module(driver.module)
    except ImportError:
        raise Refused(
            f"{dependency.name} is a {scheme}:// dependency, and its driver"
            f" ({driver.module}) is not installed: install"
            f" petsage-backend[{driver.extra}]"
        ) from None
    if dependency.password_file is not None and (
        urlsplit(dependency.url).password is not None
    ):
        raise Refused(
            f"{dependency.name}: a password in the URL and a {PASSWORD_FILE}:"
            " expected one of them"
        )
    try:
        driver.parse_url(module, dependency.driver_url)
    except (ValueError, getattr(module, "Error", ValueError)):
        raise Refused(
            f"{dependency.name} is not a {scheme}:// URL its driver accepts"
        ) from None
