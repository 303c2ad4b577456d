"""The front door: README and docs/ stay true to the code.

The quick start itself is run as written by ``scripts/wheel-smoke.sh`` (with the installed
wheel, in CI); here, fast: every ``nann-tf`` command in a bash block of README.md and docs/
parses with the CLI's own parser (a renamed or removed flag fails), every relative link
resolves, the README stays short, and the Python API the docs name is importable lazily.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from readme_quickstart import commands, fenced_blocks, quick_start  # noqa: E402

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _doc_commands():
    for path in DOCS:
        for line, body in fenced_blocks(path.read_text()):
            for argv in commands(body):
                if argv and argv[0] == "nann-tf":
                    yield pytest.param(argv, id=f"{path.name}:{line}:{argv[1]}")


def build_parser():
    """The parser of the installed ``nann-tf`` entry point (tests drive the CLI through it)."""
    from conftest import cli_main

    return sys.modules[cli_main.__module__].build_parser()


@pytest.mark.parametrize("argv", list(_doc_commands()))
def test_every_documented_command_parses(argv):
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"`{' '.join(argv)}` does not parse (exit {e.code})")


def test_the_quick_start_is_five_steps_from_a_log_to_an_answer():
    block = commands(quick_start())
    steps = [argv[1] for argv in block if argv[0] == "nann-tf"]
    assert steps == ["synth", "prepare", "train", "build-index", "export", "serve", "query"]
    assert all("--config" not in a or a[a.index("--config") + 1] == "smoke" for a in block)


def test_the_parser_of_commands_catches_a_stale_flag():
    """The check above would miss nothing it claims to catch: a flag that no longer exists
    fails the CLI's parser."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--model", "m", "--index", "i", "--output", "o",
                                   "--no-such-flag"])
    assert commands("a \\\n  b # c\nx && y &\n") == [["a", "b"], ["x"], ["y"]]


def test_links_resolve_and_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken


def test_the_python_api_is_lazy_and_complete():
    code = ("import sys, nann_tf; assert 'tensorflow' not in sys.modules, 'eager import'; "
            "missing = [n for n in nann_tf.__all__ if n != '__version__' and n not in "
            "nann_tf.__doc__ + open(sys.argv[1]).read()]; assert not missing, missing; "
            "[getattr(nann_tf, n) for n in nann_tf.__all__]; "
            "assert callable(nann_tf.train_model) and nann_tf.train_model.__name__ == 'train'")
    subprocess.run([sys.executable, "-c", code, str(ROOT / "docs" / "python-api.md")],
                   check=True, cwd=ROOT / "docs")
