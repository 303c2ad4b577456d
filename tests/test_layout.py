"""The package's shape: one home per concept, the CLI on top, nothing imported from below it.

Static checks over the source (ast, no imports), plus the command line's own promise that a
subcommand whose module fails to import is an error naming it, never a missing entry.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nann_tf"


def _imports(path: Path):
    """(module, names) of every import statement in a file."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]


def _py_files(*dirs: Path):
    for d in dirs:
        yield from sorted(d.rglob("*.py"))


def test_no_cli_modules_outside_the_cli_package():
    strays = [p.relative_to(ROOT) for p in _py_files(PACKAGE) if p.name.endswith("_cli.py")
              or (p.name == "cli.py")]
    assert strays == []


def test_the_library_bench_and_tests_never_import_the_cli():
    offenders = []
    for path in _py_files(PACKAGE, ROOT / "bench", ROOT / "tests"):
        if PACKAGE / "cli" in path.parents:
            continue
        for module, names in _imports(path):
            if module == "nann_tf.cli" or module.startswith("nann_tf.cli.") or \
                    (module == "nann_tf" and "cli" in names):
                offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert offenders == []


def test_tests_and_bench_import_no_private_name():
    offenders = []
    for path in _py_files(ROOT / "tests", ROOT / "bench"):
        for module, names in _imports(path):
            if module.startswith("nann_tf"):
                offenders += [f"{path.relative_to(ROOT)}: {module}.{n}" for n in names
                              if n.startswith("_")]
                if any(part.startswith("_") for part in module.split(".")):
                    offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert offenders == []


def test_library_errors_derive_from_user_error():
    """Every error class the library defines for bad input is printed by the CLI, not traced."""
    from nann_tf.errors import UserError

    missing = []
    for path in _py_files(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                internal = node.name in {"RequestError", "ModelLoadError", "TensorDecodeError",
                                         "CommandImportError", "UserError"}
                if not internal and not bases & {"UserError", "CliError"} and \
                        not any(b.endswith("Error") and b not in {"ValueError", "RuntimeError",
                                                                   "ImportError", "Exception"}
                                for b in bases):
                    missing.append(f"{path.relative_to(ROOT)}: {node.name}({', '.join(bases)})")
    assert missing == [], f"not UserError subclasses: {missing}"
    assert issubclass(UserError, Exception)


def test_a_subcommand_that_fails_to_import_is_named(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nann_tf.cli.tune", None)  # import now raises ImportError
    assert run_cli("--help") == 1
    err = capsys.readouterr().err
    assert "nann-tf tune" in err and "nann_tf.cli.tune failed to import" in err


@pytest.mark.parametrize("command", ["synth", "prepare", "train", "build-index", "evaluate",
                                     "tune", "export", "serve", "query", "demo"])
def test_every_subcommand_is_listed(command, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli("--help")
    assert e.value.code == 0
    assert command in capsys.readouterr().out


def test_no_long_function_without_its_reason():
    """A function whose body (docstring aside) runs past 80 lines says why, in a comment
    starting ``# Long on purpose:`` right above it (or its decorators)."""
    missing = []
    for path in _py_files(PACKAGE):
        src = path.read_text()
        lines = src.splitlines()
        for node in ast.walk(ast.parse(src)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                length -= first.end_lineno - first.lineno + 1
            if length <= 80:
                continue
            top = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 2
            while top >= 0 and lines[top].strip().startswith("#") and \
                    not lines[top].strip().startswith("# Long on purpose:"):
                top -= 1
            if top < 0 or not lines[top].strip().startswith("# Long on purpose:"):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                               f"({length} lines)")
    assert not missing, "long functions without a reason above them:\n" + "\n".join(missing)


def test_tests_mirror_the_packages():
    """A test module lives in the folder of the package it tests (tests/search/ for
    nann_tf/search/); only tests of top-level modules and of the whole (docs, layout) sit in
    tests/ itself. A folder with no package, or a package's tests left at the top, fails."""
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    folders = {p.name for p in (ROOT / "tests").iterdir() if any(p.glob("test_*.py"))}
    assert folders <= packages, f"test folders without a package: {sorted(folders - packages)}"
    top_modules = {p.stem for p in PACKAGE.glob("*.py")}
    whole = {"docs", "layout", "ops_build"}  # the repository as a whole
    misplaced = [p.name for p in (ROOT / "tests").glob("test_*.py")
                 if p.stem[len("test_"):] not in top_modules | whole]
    assert misplaced == [], f"move into the folder of the package they test: {misplaced}"
