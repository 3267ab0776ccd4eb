"""Dependencies: the other systems PetSage needs, named by two settings and checked in
the background like any other check.

One home for all of it, in layers that import only downwards:

- ``entry``: a dependency, a name and a URL, and its URL as it is shown;
- ``network`` and ``datastores``: the probes, a TCP connect and an HTTP GET, and
  PostgreSQL (a new login each run) and Redis (over one held connection) in their
  own protocol, and an SQLite file opened and read;
- ``schemes``: the one list of the schemes PetSage checks, each with its probe and,
  for a datastore, its driver and the package extra that installs it;
  ``dependency_check``, a dependency's check; and ``database_check``, the check of
  the database features keep their records in;
- ``settings``: the settings' ``name=URL`` entries read, refused in one line each.

``petsage.health.checks`` says what a check is and imports nothing of this package.
"""

from petsage.health.dependencies.entry import Dependency, redact_url
from petsage.health.dependencies.schemes import (
    DATABASE,
    SCHEMES,
    database_check,
    dependency_check,
)
from petsage.health.dependencies.settings import (
    Dependencies,
    dependencies_from,
    parse_dependencies,
    reserved_names,
)

__all__ = [
    "DATABASE",
    "SCHEMES",
    "Dependencies",
    "Dependency",
    "database_check",
    "dependencies_from",
    "dependency_check",
    "parse_dependencies",
    "redact_url",
    "reserved_names",
]
