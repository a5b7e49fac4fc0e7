"""The dependency boundaries: the runtime deploys without training or export code, and training knows nothing of
deployment. Read from the source with ast (every import statement, not a grep of text), plus a fresh interpreter
that imports the runtime and must not load torch."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"cirn.common": "common", "cirn.train": "train", "cirn.export": "export", "cirn.runtime": "runtime",
            "cirn": "cirn"}


def imports(path, package, module_level_only):
    """Absolute names of the modules a file imports: [(line, name)]; relative imports resolved against `package`."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # statements at module level, also inside a module-level if/try
        nodes = [n for top in tree.body for n in ast.walk(top)
                 if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append((node.lineno, base))
    return found


def files_of(root):
    folder = ROOT / PACKAGES[root]
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)[:-1]
        yield path, ".".join([root, *parts])


def offending(root, forbidden, module_level_only):
    return [f"{path.relative_to(ROOT)}:{line} imports {name}" for path, package in files_of(root)
            for line, name in imports(path, package, module_level_only)
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def test_runtime_imports_no_training_or_export_code_at_module_level():
    assert offending("cirn.runtime", ("cirn.train", "cirn.export", "torch", "onnx"), True) == []


def test_training_knows_nothing_of_deployment():
    assert offending("cirn.train", ("cirn.export", "cirn.runtime"), False) == []


def test_common_stands_alone():
    assert offending("cirn.common", ("cirn.train", "cirn.export", "cirn.runtime", "torch", "onnx"), False) == []


def test_the_checker_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom ..train import engine\ntry:\n    import torch\nexcept ImportError:\n    pass\n"
                   "def f():\n    from cirn.export import graph\n")
    found = [name for _, name in imports(bad, "cirn.runtime", True)]
    assert found == ["os", "cirn.train", "torch"]
    assert "cirn.export" in [name for _, name in imports(bad, "cirn.runtime", False)]


@pytest.mark.parametrize("modules, forbidden", [
    ("cirn.runtime, cirn.runtime.ort, cirn.runtime.tensorrt, cirn.common.metadata",
     "('torch', 'onnx', 'torchvision', 'yaml') or m.startswith(('cirn.train', 'cirn.export'))"),
    # The CLI reads the choice lists of training and export (plain tuples), never their torch code or yaml.
    ("cirn.cli", "('torch', 'onnx', 'torchvision', 'yaml')"),
])
def test_importing_the_runtime_and_the_cli_loads_no_training_stack(modules, forbidden):
    code = (f"import sys, {modules}\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden})\n"
            "print(bad)\nsys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("root", ["cirn.runtime", "cirn.common"])
def test_every_module_is_seen(root):
    assert len(list(files_of(root))) >= 3
