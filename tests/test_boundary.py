"""The layering: the engine is task-free. Its modules import nothing from tasks, models, data or
evaluation (dependencies point one way: cli -> tasks -> models/data/evaluation -> engine), and
never name an image, a label or a pixel, in identifiers or in strings (docstrings included)."""

import ast
import os
import re

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dblocks_jax")
ENGINE = os.path.join(PACKAGE, "engine")
FORBIDDEN_PACKAGES = ("tasks", "models", "data", "evaluation", "cli", "config", "runs")
TASK_WORDS = re.compile(r"image|label|pixel", re.IGNORECASE)


def modules(directory):
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".py"))


def imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{a.name}" for a in node.names)
    return names


def task_words(tree: ast.AST) -> list[str]:
    """Every identifier, attribute, argument and string constant that names task data."""
    found = []
    for node in ast.walk(tree):
        words = []
        if isinstance(node, ast.Name):
            words = [node.id]
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, ast.arg):
            words = [node.arg]
        elif isinstance(node, ast.keyword):
            words = [node.arg or ""]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words = [node.name]
        elif isinstance(node, ast.alias):
            words = [node.name, node.asname or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            words = [node.value]
        found.extend(f"line {getattr(node, 'lineno', '?')}: {w[:60]!r}" for w in words if TASK_WORDS.search(w))
    return found


@pytest.mark.parametrize("path", modules(ENGINE), ids=os.path.basename)
def test_engine_module_imports_no_task_layer(path):
    tree = ast.parse(open(path).read(), path)
    bad = [m for m in imported_modules(tree)
           if m.startswith("dblocks_jax.") and not m.startswith("dblocks_jax.engine")
           or any(m == f"dblocks_jax.{p}" or m.startswith(f"dblocks_jax.{p}.") for p in FORBIDDEN_PACKAGES)]
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", modules(ENGINE), ids=os.path.basename)
def test_engine_module_names_no_image_label_or_pixel(path):
    tree = ast.parse(open(path).read(), path)
    assert not task_words(tree), f"{os.path.basename(path)}: {task_words(tree)}"


def test_the_checks_would_catch_a_leak():
    leaky = ast.parse('from dblocks_jax.tasks import base\n"""Denoise the image."""\ndef f(labels): pass\n'
                      'plot(x, label="y")\n')
    assert imported_modules(leaky) == ["dblocks_jax.tasks", "dblocks_jax.tasks.base"]
    assert len(task_words(leaky)) == 3


@pytest.mark.parametrize("layer", ["models", "data", "evaluation"])
def test_lower_layers_do_not_import_tasks_or_the_cli(layer):
    for path in modules(os.path.join(PACKAGE, layer)):
        bad = [m for m in imported_modules(ast.parse(open(path).read(), path))
               if m.startswith(("dblocks_jax.tasks", "dblocks_jax.cli", "dblocks_jax.runs"))]
        assert not bad, f"{path} imports {bad}"


def test_no_module_is_over_400_lines():
    long = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                n = sum(1 for _ in open(path))
                if n > 400:
                    long.append(f"{os.path.relpath(path, PACKAGE)} ({n})")
    assert not long, long
