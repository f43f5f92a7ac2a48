"""The package's layers, as docs/architecture.md writes them down: every import (module-level and
inside functions) goes down or sideways, never up, and no two modules import each other, directly
or around a circle. The shell (cli, commands, config, runs, presets) and the engine never name a
registered task."""

import ast
import os
import re

import pytest

from dblocks_jax.tasks import task_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "dblocks_jax")


def documented_layers() -> list[set[str]]:
    """The ```layers block of docs/architecture.md, top layer first."""
    with open(os.path.join(ROOT, "docs", "architecture.md")) as f:
        block = re.search(r"```layers\n(.*?)```", f.read(), re.S)
    assert block, "docs/architecture.md has no ```layers block"
    return [set(line.split("#")[0].split()) for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def modules() -> dict[str, str]:
    """{dotted module name: file} of the package (a package's own module is its __init__)."""
    out = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: str, known: dict[str, str]) -> set[str]:
    """The package modules `name` imports anywhere in its file (a `from X import Y` counts as an
    import of X.Y where that is a module, of X otherwise)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "dblocks_jax"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] == "dblocks_jax":
                out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return out


def layer_of(name: str) -> str:
    """A module's layer: its subpackage (engine, tasks, ...) or, at the top, its own name."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_sits_in_a_documented_layer(graph):
    listed = set().union(*documented_layers())
    assert {layer_of(m) for m in graph} <= listed, sorted({layer_of(m) for m in graph} - listed)


def upward(graph, layers) -> list[str]:
    """`a -> b` for every import of a module of a higher layer (`layers`: top first)."""
    rank = {layer: i for i, names in enumerate(reversed(layers)) for layer in names}
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                  if rank[layer_of(t)] > rank[layer_of(m)])


def circles(graph) -> list[list[str]]:
    """The import circles: Tarjan's strongly connected components of more than one module (or a
    module that imports itself)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_go_down_or_sideways_never_up(graph):
    assert not upward(graph, documented_layers())


def test_no_import_circle(graph):
    assert not circles(graph)


def test_the_checks_see_function_level_imports_circles_and_upward_imports(tmp_path):
    """The checks would catch what the issue found: a circle hidden in function-level imports, and
    an import from a lower layer to a higher one."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from dblocks_jax.fake import b\n")
    b.write_text("from dblocks_jax.fake import a\n")
    known = {"dblocks_jax.fake.a": str(a), "dblocks_jax.fake.b": str(b)}
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert graph == {"dblocks_jax.fake.a": {"dblocks_jax.fake.b"}, "dblocks_jax.fake.b": {"dblocks_jax.fake.a"}}
    assert circles(graph) == [["dblocks_jax.fake.a", "dblocks_jax.fake.b"]]
    chain = {"dblocks_jax.x.a": {"dblocks_jax.x.b"}, "dblocks_jax.x.b": {"dblocks_jax.x.c"}, "dblocks_jax.x.c": set()}
    assert circles(chain) == [] and circles({"dblocks_jax.x.a": {"dblocks_jax.x.a"}}) == [["dblocks_jax.x.a"]]
    layered = {"dblocks_jax.engine.a": {"dblocks_jax.tasks.b"}, "dblocks_jax.tasks.b": {"dblocks_jax.engine.c"},
               "dblocks_jax.engine.c": set()}
    assert upward(layered, [{"tasks"}, {"engine"}]) == ["dblocks_jax.engine.a -> dblocks_jax.tasks.b"]


SHELL = ["cli.py", "config.py", "sections.py", "runs.py", "presets.py", "commands", "engine"]


def string_literals(path: str) -> list[str]:
    with open(path) as f:
        tree = ast.parse(f.read())
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_the_shell_and_the_engine_name_no_task():
    names = task_names()
    files = []
    for entry in SHELL:
        path = os.path.join(PACKAGE, entry)
        files += [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".py")] \
            if os.path.isdir(path) else [path]
    assert len(files) > 20
    found = [(os.path.relpath(p, ROOT), name) for p in files for text in string_literals(p) for name in names
             if name in text]
    assert not found, found
