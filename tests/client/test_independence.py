"""The client is its own package: ``dkclient`` never imports ``dkserver``
(so ``dk.pyz`` carries no server), the server never imports the client, and
dkclient's own import graph has no cycle.

The static checks read every module's AST, so an import hidden inside a
function (a lazy import) counts as much as one at the top.  The dynamic
checks run the client in a child interpreter in which ``dkserver`` cannot be
imported at all.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dkclient
from tests.client.dkcli import REPO, child_env

CLIENT = REPO / "dkclient"
SERVER = REPO / "dkserver"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_of(package: Path) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(package.rglob("*.py"))}


def imported_names(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """Every module ``path`` imports, anywhere in it: (line, dotted name).

    ``from a import b`` yields ``a.b`` (b may be a submodule or a name
    defined in ``a``; :func:`client_import_graph` tells them apart);
    ``importlib.import_module("x")`` and ``__import__("x")`` with
    a literal name count too.  ``importlib.util.find_spec`` only locates a
    module without running it, so it is not an import.
    """
    module = module or module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found += [(node.lineno, f"{prefix}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            if node.args and isinstance(node.args[0], ast.Constant):
                if isinstance(node.args[0].value, str):
                    found.append((node.lineno, node.args[0].value))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return False


def is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_import_scanner_sees_lazy_relative_and_dynamic_imports(tmp_path):
    """The scanner itself: an import it missed would make the tests below pass."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        textwrap.dedent(
            """
            import importlib
            import importlib.util

            def later():
                from dkserver.config import Config
                import dkserver.store as store
                from . import keys
                importlib.import_module("dkserver.web")
                importlib.util.find_spec("dkserver")
            """
        )
    )
    names = {name for _, name in imported_names(probe, "dkclient.probe")}
    expected = {"dkserver.config.Config", "dkserver.store", "dkclient.keys"}
    expected.add("dkserver.web")
    assert expected <= names
    assert "dkserver" not in names, "find_spec locates; it does not import"


def test_client_never_imports_the_server_statically():
    offences = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in modules_of(CLIENT).values()
        for line, name in imported_names(path)
        if is_within(name, "dkserver")
    ]
    assert offences == []


def test_server_never_imports_the_client_statically():
    sources = [*SERVER.rglob("*.py"), *(REPO / "twisted" / "plugins").glob("*.py")]
    assert len(sources) > 10
    offences = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in sources
        for line, name in imported_names(path)
        if is_within(name, "dkclient")
    ]
    assert offences == []


# -- dynamic: a child interpreter in which one package cannot be imported ------

BLOCKER = """
import importlib.abc
import sys

BLOCKED = {blocked!r}


class Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError(f"{{spec.name}} is blocked in this test")

    def exec_module(self, module):
        raise ImportError(f"{{module.__name__}} is blocked in this test")


# Finds the package where it is (so find_spec works) but cannot load it.
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != BLOCKED and not name.startswith(BLOCKED + "."):
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    spec.loader = Refuse()
                    return spec
        return None


sys.meta_path.insert(0, Blocked())
assert not [m for m in sys.modules if m.split(".")[0] == BLOCKED]
"""


def run_blocked(blocked: str, code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where ``blocked`` is unimportable."""
    script = BLOCKER.format(blocked=blocked) + textwrap.dedent(code)
    env = child_env(DK_HOME="/nonexistent/dk-home")
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_blocker_blocks_import_but_not_find_spec():
    result = run_blocked(
        "dkserver",
        """
        import importlib.util
        spec = importlib.util.find_spec("dkserver")
        print(spec.submodule_search_locations[0])
        import dkserver.config
        """,
    )
    assert result.returncode != 0 and "blocked in this test" in result.stderr
    assert result.stdout.strip() == str(SERVER)


def test_every_client_module_imports_without_the_server():
    names = sorted(modules_of(CLIENT))
    assert "dkclient.__main__" in names and "dkclient.cli" in names
    result = run_blocked(
        "dkserver",
        """
        import importlib, sys
        for name in sys.argv[1:]:
            if name != "dkclient.__main__":
                importlib.import_module(name)
        import dkclient
        for name in dkclient.__all__:  # the lazy public API resolves too
            getattr(dkclient, name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] == "dkserver")
        assert not leaked, leaked
        print("ok", len(sys.argv) - 1)
        """,
        *names,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", str(len(names))]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["--help"], "usage: dk"), (["version"], f"dk {dkclient.__version__}")],
    ids=["dk --help", "dk version"],
)
def test_dk_runs_without_the_server(argv, expected):
    result = run_blocked(
        "dkserver",
        """
        import runpy, sys
        sys.argv = ["dk", *sys.argv[1:]]
        try:
            runpy.run_module("dkclient", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code
        else:
            code = 0
        leaked = sorted(m for m in sys.modules if m.split(".")[0] == "dkserver")
        assert not leaked, leaked
        sys.exit(code)
        """,
        *argv,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert "Traceback" not in result.stderr


def test_server_modules_import_without_the_client():
    names = sorted(n for n in modules_of(SERVER) if not n.endswith("__main__"))
    result = run_blocked(
        "dkclient",
        """
        import importlib, sys
        for name in sys.argv[1:]:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] == "dkclient")
        assert not leaked, leaked
        print("ok")
        """,
        *names,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- dkclient's import graph is acyclic ------------------------------------------


def client_import_graph() -> dict[str, set[str]]:
    """dkclient module -> the dkclient modules it imports (AST, lazy included).

    ``from m import name`` depends on ``m.name`` when that is a module, else
    on ``m``; a name imported from the package itself (``from dkclient import
    Client``) comes through its lazy ``__getattr__`` from the module that
    ``_EXPORTS`` names.
    """
    import dkclient

    modules = modules_of(CLIENT)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for _, imported in imported_names(path):
            parent, _, attr = imported.rpartition(".")
            if imported in modules:
                edges.add(imported)
            elif parent == "dkclient" and attr in dkclient._EXPORTS:
                edges.add(dkclient._EXPORTS[attr])
            elif parent in modules:
                edges.add(parent)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated at the end)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y2"}, "y2": {"y"}}) == ["y", "y2", "y"]


def test_client_import_graph_is_acyclic():
    graph = client_import_graph()
    assert "dkclient.commands" in graph["dkclient.cli"]  # the lazy import counts
    assert "dkclient.account" in graph["dkclient.session"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_parser_module_imports_only_the_standard_library_at_the_top():
    """``dk`` reports a missing pynacl/cryptography instead of a traceback
    only if the parser gets that far: nothing but stdlib and dependency-free
    dkclient modules at cli's top level."""
    tree = ast.parse((CLIENT / "cli.py").read_text(encoding="utf-8"))
    top = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [None])
    ]
    allowed = {"__future__", "argparse", "importlib", "os", "sys"}
    allowed |= {"dkclient", "dkclient.exits"}
    assert set(top) <= allowed, top
