"""The type stubs (p2pnode/_native.pyi, shipped in the wheel) name exactly what the native
module has: every class, method and property, both ways."""

import ast
import inspect
from pathlib import Path

import p2pnode
from p2pnode import _native

STUB = Path(p2pnode.__file__).with_name("_native.pyi")


def _stub_names():
    tree = ast.parse(STUB.read_text())
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AnnAssign)):
                    name = item.name if isinstance(item, ast.FunctionDef) else item.target.id
                    members.add(name)
            names[node.name] = members
        elif isinstance(node, ast.AnnAssign):
            names[node.target.id] = None
    return names


def test_the_stub_ships_with_the_package():
    assert STUB.is_file()
    assert STUB.with_name("py.typed").is_file()


def test_stubs_and_module_agree():
    stub = _stub_names()
    public = {n for n in dir(_native) if not n.startswith("_")}
    assert set(stub) - {"_Callback"} == public
    for name, members in stub.items():
        if members is None or name.startswith("_"):
            continue
        cls = getattr(_native, name)
        if issubclass(cls, Exception):
            continue  # attributes set per instance
        runtime = {n for n, _ in inspect.getmembers(cls) if not n.startswith("_")}
        stub_public = {m for m in members if not m.startswith("_")}
        assert stub_public == runtime, f"{name}: stub {sorted(stub_public ^ runtime)}"
