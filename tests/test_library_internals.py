"""The library internals PetSage relies on: listed, held to the installed libraries,
and held to the code.

docs/contributors/library-internals.md lists them in one table, which these tests
read: it is the list's one copy. The first test holds each entry to what is installed
(the name exists, is callable where PetSage calls or replaces it, with the
parameters it relies on) and fails naming the entry. The second reads PetSage's code
(petsage/, gunicorn.conf.py, wsgi.py) with ``ast`` and finds every use of a library's
private name (a module attribute, an import, the attribute of a library class that a
subclass reads, sets, calls or overrides) and every attribute of a library replaced
by assignment; it fails on each one the table does not list, and on each entry whose
use is gone.
"""

import ast
import importlib
import inspect
import re
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.support.gunicorn_process import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "contributors" / "library-internals.md"
COLUMNS = ["Library", "Name", "Use", "Where", "Why PetSage needs it", "On an upgrade"]
USES = frozenset({"imports", "reads", "calls", "sets", "replaces", "overrides"})
SCANNED = [
    *sorted((REPO_ROOT / "petsage").rglob("*.py")),
    REPO_ROOT / "gunicorn.conf.py",
    REPO_ROOT / "wsgi.py",
]
# A receiver the scan cannot name (a gunicorn object passed to a hook as ``Any``).
UNKNOWN = "?"
CODE = re.compile(r"`([^`]+)`")
NAME = re.compile(r"^(?P<path>[\w.()]+?)(?:\((?P<parameters>[\w, ]*)\))?$")


def private(name: str) -> bool:
    """Whether ``name`` is private by Python's convention (``_x``, not ``__x__``)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass(frozen=True)
class Entry:
    """One row of the page's table."""

    library: str
    # The dotted path of what is relied on; a segment ending in () is the class a
    # factory returns (``prometheus_client.values.MultiProcessValue()._value``).
    path: str
    # The parameters relied on, for a name written with them; None for a value.
    parameters: tuple[str, ...] | None
    uses: frozenset[str]
    where: frozenset[str]

    def __str__(self) -> str:
        shown = "" if self.parameters is None else f"({', '.join(self.parameters)})"
        return f"{self.path}{shown}"

    @property
    def attribute(self) -> str:
        """The last segment: what a use on a receiver the scan cannot name matches."""
        return self.path.rsplit(".", 1)[-1]


def cells(line: str) -> list[str]:
    """A Markdown table row's cells."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def entries(text: str) -> list[Entry]:
    """The entries of the page's table (the one whose header is COLUMNS)."""
    lines = text.splitlines()
    [start] = [
        i
        for i, line in enumerate(lines)
        if line.startswith("|") and cells(line) == COLUMNS
    ]
    found = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        library, name, uses, where, _, _ = cells(line)
        [written] = CODE.findall(name)
        match = NAME.match(written)
        assert match, f"not a dotted name with optional (parameters): {written}"
        parameters = match["parameters"]
        found.append(
            Entry(
                library=library,
                path=match["path"],
                parameters=None
                if parameters is None
                else tuple(p.strip() for p in parameters.split(",") if p.strip()),
                uses=frozenset(use.strip() for use in uses.split(",")),
                where=frozenset(CODE.findall(where)),
            )
        )
    return found


@cache
def listed() -> tuple[Entry, ...]:
    """The page's entries."""
    return tuple(entries(PAGE.read_text()))


# The libraries' side: what an entry names must exist as the entry says.


def resolve(path: str) -> object:
    """What ``path`` names.

    The longest importable prefix is the module; each further segment is an
    attribute, and one ending in () is called without arguments (a factory). An
    attribute no class has but its ``__init__`` (or another method) assigns to
    ``self`` resolves to the name itself, a ``str``. AttributeError otherwise.
    """
    segments = path.split(".")
    for count in range(len(segments), 0, -1):
        prefix = segments[:count]
        if any(segment.endswith("()") for segment in prefix):
            continue
        try:
            target: object = importlib.import_module(".".join(prefix))
        except ImportError:
            continue
        break
    else:
        raise AttributeError(f"no module of {path} can be imported")
    for segment in segments[count:]:
        owner = target
        called = segment.endswith("()")
        attribute = segment.removesuffix("()")
        if hasattr(target, attribute):
            target = getattr(target, attribute)
        elif isinstance(target, type) and attribute in assigned_to_self(target):
            target = attribute
        else:
            raise AttributeError(f"{owner!r} has no {attribute}")
        if called:
            assert callable(target), f"{segment}: not callable"
            target = target()
    return target


def library_classes(cls: type) -> Iterator[type]:
    """``cls`` and its bases, PetSage's and the builtins' left out."""
    for klass in cls.__mro__:
        module = klass.__module__
        if module != "builtins" and not module.startswith("petsage"):
            yield klass


@cache
def source_of(klass: type) -> str:
    """A class's source, or nothing where it has none (written in C)."""
    try:
        return inspect.getsource(klass)
    except (OSError, TypeError):
        return ""


def assigned_to_self(cls: type) -> set[str]:
    """The attributes the methods of ``cls`` and its bases assign to ``self``."""
    names: set[str] = set()
    for klass in library_classes(cls):
        # Dedented: the class a factory returns is written inside a function.
        source = textwrap.dedent(source_of(klass))
        if not source:
            continue
        for node in ast.walk(ast.parse(source)):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            for target in targets:
                for each in ast.walk(target):
                    if (
                        isinstance(each, ast.Attribute)
                        and isinstance(each.value, ast.Name)
                        and each.value.id == "self"
                    ):
                        names.add(each.attr)
    return names


@cache
def distributions() -> Mapping[str, list[str]]:
    """The installed distributions that provide each top-level module."""
    return packages_distributions()


def distribution_problem(entry: Entry) -> str | None:
    """Why the entry's Library column does not name where its module comes from."""
    top = entry.path.split(".")[0]
    if entry.library == "Python":
        return None if top in sys.stdlib_module_names else f"{top} is not Python's"
    providers = {canonicalize_name(d) for d in distributions().get(top, [])}
    if canonicalize_name(entry.library) not in providers:
        return f"{top} comes from {sorted(providers) or 'nothing installed'}"
    return None


def library_problem(entry: Entry) -> str | None:
    """Why the installed library no longer has what ``entry`` relies on, or None."""
    if problem := distribution_problem(entry):
        return problem
    try:
        target = resolve(entry.path)
    except AttributeError as error:
        return f"gone: {error}"
    if entry.parameters is None:
        return None
    if not callable(target):
        return f"not callable: {target!r}"
    parameters = list(inspect.signature(target).parameters.values())
    if parameters and parameters[0].name in ("self", "cls"):
        parameters = parameters[1:]
    names = tuple(parameter.name for parameter in parameters)
    # PetSage passes (or, replacing it, takes) the listed ones, in their order: they
    # lead, and any other must be optional.
    count = len(entry.parameters)
    extra = [
        parameter.name
        for parameter in parameters[count:]
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
    if names[:count] != entry.parameters or extra:
        return f"its parameters are now ({', '.join(names)})"
    return None


def test_the_page_lists_entries_in_its_table() -> None:
    assert listed(), f"no table headed {' | '.join(COLUMNS)} in {PAGE.name}"
    for entry in listed():
        assert entry.uses <= USES, f"{entry}: unknown use {set(entry.uses - USES)}"
        assert entry.where, f"{entry}: no Where"


@pytest.mark.parametrize("entry", listed(), ids=str)
def test_each_entry_is_what_the_installed_library_has(entry: Entry) -> None:
    problem = library_problem(entry)
    assert problem is None, f"{entry} ({PAGE.name}): {problem}"


# The code's side: every use of a library's private name, found with ast.


@dataclass(frozen=True)
class Use:
    """One use the scan found."""

    target: str  # dotted, as an entry writes it; ``?.name`` for an unknown receiver
    where: str
    use: str
    # A private name or a replaced attribute must be listed; a public name of a
    # library (every import and read the scan sees) only matches an entry for one.
    required: bool = True


def module_of(path: Path) -> str:
    """The module a scanned file is (``petsage.serving.server``), or its file name
    when it is not one (``gunicorn.conf.py``)."""
    relative = path.relative_to(REPO_ROOT)
    if relative.parts[0] != "petsage" and relative.name != "wsgi.py":
        return relative.as_posix()
    parts = list(relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking(node: ast.If) -> bool:
    """Whether ``node`` is ``if TYPE_CHECKING:``, whose imports never run."""
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def own_private_names(trees: dict[str, ast.Module]) -> set[str]:
    """Every private name PetSage defines: functions, and names it assigns."""
    names: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name | ast.Attribute) and isinstance(
                node.ctx, ast.Store
            ):
                names.add(node.id if isinstance(node, ast.Name) else node.attr)
    return {name for name in names if private(name)}


@dataclass
class Scope:
    """What names mean in one module, function or class body."""

    aliases: dict[str, str]  # name -> dotted library path
    functions: set[str] = field(default_factory=set)


class Scanner(ast.NodeVisitor):
    """Finds the uses of libraries' internals in one module."""

    def __init__(
        self, module: str, classes: dict[str, list[str]], own: set[str]
    ) -> None:
        self.module = module
        # Every PetSage class (module.Class) and its bases, as dotted paths.
        self.classes = classes
        self.own = own
        self.scopes = [Scope({})]
        # The enclosing definitions: ("class" or "function", name).
        self.place: list[tuple[str, str]] = []
        # The class whose instance ``self`` is here, if any, per definition.
        self.class_stack: list[str | None] = []
        self.uses: list[Use] = []

    # Where, and what names mean.

    @property
    def where(self) -> str:
        """The module and its top-level definition; for a class, the method too."""
        names = [name for _, name in self.place]
        top = 2 if self.place and self.place[0][0] == "class" else 1
        return ".".join([self.module, *names[:top]])

    @property
    def in_class_body(self) -> bool:
        """Whether the definition being visited is a class's own (a method)."""
        return bool(self.place) and self.place[-1][0] == "class"

    def dotted(self, node: ast.expr) -> str | None:
        """The library path ``node`` names (``values.MmapedDict`` read as
        ``prometheus_client.values.MmapedDict``), or None when it names none."""
        if isinstance(node, ast.Name):
            for scope in reversed(self.scopes):
                if node.id in scope.aliases:
                    return scope.aliases[node.id]
            return None
        if isinstance(node, ast.Attribute):
            owner = self.dotted(node.value)
            return None if owner is None else f"{owner}.{node.attr}"
        if isinstance(node, ast.Call):
            called = self.dotted(node.func)
            return None if called is None else f"{called}()"
        return None

    def library_bases(self, dotted_class: str) -> list[str]:
        """The library classes behind one of PetSage's, through its PetSage bases."""
        found = []
        for base in self.classes.get(dotted_class, []):
            if base.startswith("petsage.") or base in self.classes:
                found += self.library_bases(base)
            else:
                found.append(base)
        return found

    def owner_of(self, attribute: str, cls: str | None = None) -> str | None:
        """The library base of ``cls`` (by default, the class ``self`` is an
        instance of) whose source mentions ``attribute``, or None: then it is
        PetSage's own."""
        current = cls or (self.class_stack[-1] if self.class_stack else None)
        if current is None:
            return None
        for base in self.library_bases(current):
            if mentions(base, attribute):
                return base
        return None

    def note(self, target: str, use: str, required: bool = True) -> None:
        """Record one use here."""
        self.uses.append(Use(target, self.where, use, required))

    # Imports.

    def bind(self, name: str, dotted: str) -> None:
        """``name`` means ``dotted`` from here on, when it is a library's."""
        if dotted.split(".")[0] not in ("petsage", "tests"):
            self.scopes[-1].aliases[name] = dotted

    def visit_Import(self, node: ast.Import) -> None:
        """``import a.b`` binds ``a``; ``import a.b as c`` binds ``c``."""
        for alias in node.names:
            if alias.asname:
                self.bind(alias.asname, alias.name)
            else:
                top = alias.name.split(".")[0]
                self.bind(top, top)
            needed = any(private(part) for part in alias.name.split("."))
            self.note(alias.name, "imports", needed)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        """``from a import b`` binds ``b`` to ``a.b``."""
        if node.level or node.module is None:
            return  # PetSage's own modules
        for alias in node.names:
            dotted = f"{node.module}.{alias.name}"
            self.bind(alias.asname or alias.name, dotted)
            if node.module.split(".")[0] in ("petsage", "tests"):
                continue
            self.note(dotted, "imports", any(private(p) for p in dotted.split(".")))

    def visit_If(self, node: ast.If) -> None:
        """Skip ``if TYPE_CHECKING:``: nothing in it runs."""
        if type_checking(node):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    # Definitions.

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        """A class: its bases decide whose private names ``self`` has."""
        dotted_class = ".".join([self.module, *(n for _, n in self.place), node.name])
        bases = []
        for base in node.bases:
            expression = base.value if isinstance(base, ast.Subscript) else base
            found = self.dotted(expression)
            if found is None and isinstance(expression, ast.Name):
                found = self.local_class(expression.id)
            if found is not None:
                bases.append(found)
        self.classes[dotted_class] = bases
        for statement in node.body:
            # A class attribute that a library base already has is an override.
            targets = (
                statement.targets
                if isinstance(statement, ast.Assign)
                else [statement.target]
                if isinstance(statement, ast.AnnAssign)
                else []
            )
            for target in targets:
                if isinstance(target, ast.Name) and private(target.id):
                    owner = self.owner_of(target.id, dotted_class)
                    if owner is not None:
                        self.place.append(("class", node.name))
                        self.note(f"{owner}.{target.id}", "overrides")
                        self.place.pop()
        self.scopes[-1].functions.add(node.name)
        self.place.append(("class", node.name))
        self.class_stack.append(dotted_class)
        self.scopes.append(Scope({}))
        self.generic_visit(node)
        self.scopes.pop()
        self.class_stack.pop()
        self.place.pop()

    def local_class(self, name: str) -> str | None:
        """The dotted name of a PetSage class ``name`` defined in this module."""
        for dotted_class in self.classes:
            if dotted_class.startswith(self.module + ".") and dotted_class.endswith(
                "." + name
            ):
                return dotted_class
        return None

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        """A function: see ``definition``."""
        self.definition(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        """A coroutine function: see ``definition``."""
        self.definition(node)

    def definition(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        """A method that a library base has is overridden. Inside a function, local
        names may stand for a library's (``base = values.MultiProcessValue(...)``),
        and ``self`` is the class's only in its methods and their closures."""
        method = self.in_class_body
        if method:
            owner = self.owner_of(node.name)
            if owner is not None:
                # A public method overridden needs a row only where one is written.
                self.place.append(("function", node.name))
                self.note(f"{owner}.{node.name}", "overrides", private(node.name))
                self.place.pop()
        self.scopes[-1].functions.add(node.name)
        scope = Scope({})
        for statement in ast.walk(node):
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
                scope.functions.add(statement.name)
        current = self.class_stack[-1] if self.class_stack else None
        self.class_stack.append(current if method or current else None)
        self.place.append(("function", node.name))
        self.scopes.append(scope)
        for statement in node.body:
            self.visit(statement)
        self.scopes.pop()
        self.place.pop()
        self.class_stack.pop()

    # Uses.

    def is_self(self, node: ast.expr) -> bool:
        """``self``, ``cls`` or ``super()`` inside a method."""
        if isinstance(node, ast.Name):
            return node.id in ("self", "cls")
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "super"
        )

    def is_function(self, node: ast.expr) -> bool:
        """Whether ``node`` is PetSage's function: a lambda, or a function's name."""
        if isinstance(node, ast.Lambda):
            return True
        return isinstance(node, ast.Name) and any(
            node.id in scope.functions for scope in self.scopes
        )

    def attribute_use(self, node: ast.Attribute, use: str) -> None:
        """Record ``node`` (``receiver.name``): a library's private name, or any
        name of a library the scan can name."""
        owner = self.dotted(node.value)
        if not private(node.attr):
            # A public name needs no entry, but matches one that lists it: of a
            # library the scan can name, or of an object it cannot (a gunicorn
            # request or worker), by the entry's last segment and Where.
            if owner is not None:
                self.note(f"{owner}.{node.attr}", use, required=False)
            elif not self.is_self(node.value):
                self.note(f"{UNKNOWN}.{node.attr}", use, required=False)
            return
        if owner is not None:
            self.note(f"{owner}.{node.attr}", use)
        elif self.is_self(node.value):
            base = self.owner_of(node.attr)
            if base is not None:
                self.note(f"{base}.{node.attr}", use)
        elif node.attr not in self.own:
            self.note(f"{UNKNOWN}.{node.attr}", use)

    def visit_Call(self, node: ast.Call) -> None:
        """A call of a private name is a call; ``setattr`` on a library is a store."""
        if isinstance(node.func, ast.Attribute):
            self.attribute_use(node.func, "calls")
            self.visit(node.func.value)
        else:
            self.visit(node.func)
        if (
            isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and len(node.args) == 3
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            self.store(node.args[0], node.args[1].value, node.args[2])
        for argument in [*node.args, *node.keywords]:
            self.visit(argument)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        """A read of ``receiver.name`` (stores are seen by their assignment)."""
        if isinstance(node.ctx, ast.Load):
            self.attribute_use(node, "reads")
        self.visit(node.value)

    def store(self, receiver: ast.expr, name: str, value: ast.expr | None) -> None:
        """``receiver.name = value``: replacing a library's attribute, or setting a
        private one of a library class in a subclass."""
        owner = self.dotted(receiver)
        if owner is not None and not owner.endswith("()"):
            # A library module's or class's attribute: patched for everyone.
            self.note(f"{owner}.{name}", "replaces")
        elif owner is not None:
            # An instance PetSage made: its public attributes are its to set.
            if value is not None and self.is_function(value):
                self.note(f"{owner}.{name}", "replaces")
            elif private(name):
                self.note(f"{owner}.{name}", "sets")
        elif self.is_self(receiver):
            base = self.owner_of(name) if private(name) else None
            if base is not None:
                self.note(f"{base}.{name}", "sets")
        elif value is not None and self.is_function(value):
            # A function of PetSage's put on another object: a method replaced.
            self.note(f"{UNKNOWN}.{name}", "replaces")
        elif private(name) and name not in self.own:
            self.note(f"{UNKNOWN}.{name}", "sets")

    def assignment(self, targets: list[ast.expr], value: ast.expr | None) -> None:
        """Record stores into attributes; note local names for a library's."""
        for target in targets:
            for each in ast.walk(target):
                if isinstance(each, ast.Attribute) and isinstance(each.ctx, ast.Store):
                    self.store(each.value, each.attr, value)
            if isinstance(target, ast.Name) and value is not None:
                dotted = self.dotted(value)
                if dotted is not None:
                    self.scopes[-1].aliases[target.id] = dotted

    def visit_Assign(self, node: ast.Assign) -> None:
        """``a.b = c``."""
        self.assignment(list(node.targets), node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        """``a.b: T = c``."""
        self.assignment([node.target], node.value)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        """``a.b += c``."""
        self.assignment([node.target], None)
        self.generic_visit(node)


@cache
def mentions(dotted_class: str, name: str) -> bool:
    """Whether the library class ``dotted_class`` (or what a factory returns) or a
    base of it names ``name`` in its source."""
    try:
        cls = resolve(dotted_class)
    except AttributeError:
        return False
    if not isinstance(cls, type):
        return False
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    return any(pattern.search(source_of(klass)) for klass in library_classes(cls))


def scan() -> list[Use]:
    """Every use of a library's internals in PetSage's code."""
    trees = {module_of(path): ast.parse(path.read_text()) for path in SCANNED}
    own = own_private_names(trees)
    classes: dict[str, list[str]] = {}
    uses: list[Use] = []
    # Twice: the first pass learns every class's bases, for subclasses elsewhere.
    for _ in range(2):
        uses = []
        for module, tree in trees.items():
            scanner = Scanner(module, classes, own)
            scanner.visit(tree)
            uses += scanner.uses
    return uses


def code_problems(entries: list[Entry], uses: list[Use]) -> list[str]:
    """How ``entries`` and the uses found disagree, one line each."""
    problems = []
    found: dict[tuple[str, str], set[str]] = {}
    required: set[tuple[str, str]] = set()
    for use in uses:
        found.setdefault((use.target, use.where), set()).add(use.use)
        if use.required:
            required.add((use.target, use.where))
    matched: dict[Entry, dict[str, set[str]]] = {}
    for (target, where), kinds in sorted(found.items()):
        candidates = [
            entry
            for entry in entries
            if where in entry.where
            and (
                entry.path == target
                or (target.startswith(f"{UNKNOWN}.") and entry.attribute == target[2:])
            )
        ]
        if not candidates:
            if (target, where) in required:
                problems.append(
                    f"{target} ({', '.join(sorted(kinds))}) in {where}: not listed"
                )
            continue
        matched.setdefault(candidates[0], {}).setdefault(where, set()).update(kinds)
    for entry in entries:
        seen = matched.get(entry, {})
        for where in sorted(entry.where - set(seen)):
            problems.append(f"{entry}: no use in {where} any more")
        kinds = set().union(*seen.values()) if seen else set()
        if seen and kinds != entry.uses:
            problems.append(
                f"{entry}: used as {', '.join(sorted(kinds))},"
                f" listed as {', '.join(sorted(entry.uses))}"
            )
    return problems


def test_the_code_uses_no_library_internal_the_page_does_not_list() -> None:
    problems = code_problems(list(listed()), scan())
    assert problems == [], f"{PAGE.name} and the code disagree:\n" + "\n".join(problems)
