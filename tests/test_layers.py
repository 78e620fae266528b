"""The packages' layers, read from the source: what a package must never import.

Data flows one way (docs/architecture.md): the API speaks the protocols and reaches jobs
through the jobs layer's services, never its database or its executor, nor a host; a host
reports through events and never touches the jobs layer or the API; the jobs layer is
resource-agnostic (a resource's kind is given to it, openmaker/resources.py lists them); the
container runtime knows none of them; the API's shapes know no layer that uses them. Every
import counts,
those inside functions and under TYPE_CHECKING included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "openmaker"

# A package (a folder under openmaker/) and the modules it must not import (nor their
# submodules).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "api": (
        "sqlalchemy",
        "openmaker.jobs.db",
        "openmaker.jobs.executor",
        "openmaker.training.host",
    ),
    "training/host": ("openmaker.jobs", "openmaker.api"),
    # The shared machinery of every kind of job knows no kind, nor who drives it.
    "jobs": ("openmaker.training", "openmaker.resources", "openmaker.api", "openmaker.cli"),
    "training": ("openmaker.api", "openmaker.cli", "openmaker.serving"),
    # Serving runs its instances on the runtime, never through the training host.
    "serving": ("openmaker.training", "openmaker.api", "openmaker.cli"),
    "shapes": ("openmaker.jobs", "openmaker.training", "openmaker.api", "openmaker.store"),
    # The container runtime knows nothing of what runs in its containers.
    "runtime": ("openmaker.training", "openmaker.serving", "openmaker.jobs", "openmaker.api"),
}

# Imports that break a rule above and are kept for now: (importing module, imported module)
# and why. Each entry must still be needed: one that no longer is fails the test.
ALLOWED: dict[tuple[str, str], str] = {
    # The Ray cluster's connection and bundle sizing are training's hosts', shared until they
    # move to a package of their own.
    ("openmaker.serving.ray_instances", "openmaker.training"): "Ray: connect, bundle_for",
    ("openmaker.serving.ray_agent", "openmaker.training"): "Ray: the agents' digest, retiring",
    # `openmaker cluster` lists the endpoints' instances beside the jobs' hosts.
    ("openmaker.training.cluster_nodes", "openmaker.serving"): "Ray: the instances per node",
}


def imports(module: str, source: str) -> Iterator[str]:
    """Every module that `module` (its source `source`) imports, by absolute name: `from a
    import b` gives both `a` and `a.b` (b may be a module)."""
    parts = module.split(".")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative to the module's package, `level - 1` up
                base = ".".join(parts[: len(parts) - node.level])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            yield name
            yield from (f"{name}.{alias.name}" for alias in node.names)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations() -> set[tuple[str, str]]:
    """(importing module, imported module) for every import a rule forbids."""
    found: set[tuple[str, str]] = set()
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / package).rglob("*.py")):
            module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
            for name in imports(module, path.read_text()):
                if any(_under(name, prefix) for prefix in forbidden):
                    found.add((module, _owner(name, forbidden)))
    return found


def _owner(name: str, forbidden: tuple[str, ...]) -> str:
    """The imported module as a rule names it: `openmaker.jobs.db.TrainingJob` is jobs.db."""
    return next(p for p in sorted(forbidden, key=len, reverse=True) if _under(name, p))


def test_no_package_imports_what_its_layer_forbids() -> None:
    found = violations()
    unexplained = sorted(found - set(ALLOWED))
    assert not unexplained, "\n".join(f"{m} imports {i}" for m, i in unexplained)
    stale = sorted(set(ALLOWED) - found)
    assert not stale, f"allowed imports no longer made (remove them from ALLOWED): {stale}"


def test_the_scan_sees_every_kind_of_import() -> None:
    """A plain, a from-, a nested and a relative import are all seen, by absolute name."""
    source = (
        "import sqlalchemy.orm\n"
        "from openmaker.jobs import db\n"
        "from ..jobs.executor import Worker\n"
        "def f() -> None:\n"
        "    from openmaker.training.host import limits\n"
    )
    found = set(imports("openmaker.api.sample", source))
    assert {"sqlalchemy.orm", "openmaker.jobs.db", "openmaker.jobs.executor"} <= found
    assert "openmaker.training.host.limits" in found


# What the API must not reach for: the database's session factories.
SESSION_NAMES = {"sessionmaker", "sessions", "writers", "writer_sessions"}


def _names(source: str) -> Iterator[str]:
    """Every name and attribute a module's source uses."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.alias):
            yield node.asname or node.name.rsplit(".", 1)[-1]


def test_the_api_is_given_services_not_database_sessions() -> None:
    found = sorted(
        f"{path.relative_to(PACKAGE)} uses {name}"
        for path in (PACKAGE / "api").rglob("*.py")
        for name in set(_names(path.read_text())) & SESSION_NAMES
    )
    assert not found, "\n".join(found)


def _kills(source: str) -> bool:
    """Whether the source calls os.kill (a signal to one process by its PID)."""
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "kill"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "os"
        for node in ast.walk(ast.parse(source))
    )


def test_only_the_executor_signals_a_worker() -> None:
    """A worker is named by the executor's opaque reference, which only the executor reads:
    nothing else sends a signal to a process by PID (the container runtime signals the
    processes it started itself)."""
    found = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if _kills(path.read_text())
        and not path.relative_to(PACKAGE).as_posix().startswith(("runtime/", "jobs/executor"))
    )
    assert not found, f"os.kill outside the executor: {found}"


def test_the_scans_see_sessions_and_kills() -> None:
    source = "import os\nfrom x import sessionmaker\ndef f(j):\n    os.kill(j.pid, 9)\n"
    assert "sessionmaker" in set(_names(source))
    assert "sessions" in set(_names("self.jobs.sessions()"))
    assert _kills(source) and not _kills("os.killpg(1, 9)")
