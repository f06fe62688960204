"""The core is pure (docs/protocol.md A.1): no module under josefine/raft/
imports threads, clocks, randomness, sockets, storage, actors, serialisation or the OS."""
import ast
import pathlib

import pytest

import josefine.raft

pytestmark = pytest.mark.timeout(60)

FORBIDDEN = {"threading", "time", "random", "socket", "zmq", "plyvel", "pykka", "asyncio", "os",
             "subprocess", "msgpack", "datetime"}
FORBIDDEN_PACKAGES = ("josefine.actors", "josefine.transport")
RAFT_DIR = pathlib.Path(josefine.raft.__file__).parent


def imported_modules(path: pathlib.Path) -> set[str]:
    package = "josefine.raft"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            found.update(a.value for a in node.args if isinstance(a, ast.Constant))
    return found


def violations(mods: set[str]) -> set[str]:
    return {m for m in mods if m.split(".")[0] in FORBIDDEN
            or any(m == p or m.startswith(p + ".") for p in FORBIDDEN_PACKAGES)}


def test_checker_catches_forbidden_imports():
    assert violations({"time", "os.path", "josefine.actors.node", "josefine.transport"}) == \
        {"time", "os.path", "josefine.actors.node", "josefine.transport"}
    assert violations({"logging", "josefine.chain.block", "dataclasses", "timeit"}) == set()


MODULES = sorted(RAFT_DIR.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_raft_module_imports_nothing_impure(path):
    assert violations(imported_modules(path)) == set(), path.name


def test_the_core_modules_are_all_checked():
    assert {p.name for p in MODULES} >= {"core.py", "ready.py", "tree.py", "progress.py"}
