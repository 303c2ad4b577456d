"""The documentation's shell blocks, as code: extracted, checked and (the quick start) run.

    python scripts/readme_quickstart.py --workdir DIR      # run README.md's quick start

Runs the README's "Quick start" block as written with bash in DIR (the only change: port 8500
becomes a free port, so that a test run cannot collide with a server already there), stops the
server it started, and checks the last command's JSON answer: k item ids, none of them padding.
``scripts/wheel-smoke.sh`` runs it with the installed wheel; ``tests/test_docs.py`` imports
:func:`fenced_blocks` and :func:`commands` to parse every ``nann-tf`` command of README.md and
docs/ with the CLI's own parser.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK_START = "## Quick start: your log to a served model"
_FENCE = re.compile(r"^```(\w*)\s*$")


def fenced_blocks(text: str, lang: str = "bash") -> list[tuple[int, str]]:
    """``(first line number, body)`` of every fenced block of language ``lang``."""
    out, body, start, inside = [], [], 0, None
    for no, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if inside is None and m:
            inside, body, start = m.group(1), [], no + 1
        elif inside is not None and line.strip() == "```":
            if inside == lang:
                out.append((start, "\n".join(body)))
            inside = None
        elif inside is not None:
            body.append(line)
    return out


def quick_start(readme: Path = ROOT / "README.md") -> str:
    """The first bash block after the quick-start heading."""
    text = readme.read_text()
    at = text.find(QUICK_START)
    if at < 0:
        raise SystemExit(f"{readme}: no {QUICK_START!r} section")
    blocks = fenced_blocks(text[at:])
    if not blocks:
        raise SystemExit(f"{readme}: the quick start has no bash block")
    return blocks[0][1]


def commands(block: str) -> list[list[str]]:
    """The block's commands as argv lists: continuation lines joined, comments and a trailing
    ``&`` dropped; ``a && b`` gives two commands."""
    logical, cur = [], ""
    for line in block.splitlines():
        cur += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(cur)
            cur = ""
    out = []
    for line in logical:
        argv = shlex.split(line, comments=True)
        while argv and argv[-1] == "&":
            argv.pop()
        part = []
        for tok in argv + ["&&"]:
            if tok in ("&&", ";"):
                if part:
                    out.append(part)
                part = []
            else:
                part.append(tok)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_quick_start(workdir: Path, k: int = 10, timeout: float = 1500.0) -> dict:
    """Runs the quick start in ``workdir``; returns the query's JSON answer."""
    block = quick_start().replace("8500", str(_free_port()))
    workdir.mkdir(parents=True, exist_ok=True)
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + block
    proc = subprocess.run(["bash", "-c", script], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-6000:])
        raise SystemExit(f"the README's quick start failed (exit {proc.returncode})")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit("the quick start's query printed no JSON:\n" + proc.stdout[-3000:])
    answer = json.loads(lines[-1])
    ids = answer.get("item_ids", [])
    if len(ids) != k or any(i in (0, "") for i in ids):
        raise SystemExit(f"the quick start's query returned {ids!r}: expected {k} item ids")
    return answer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args(argv)
    answer = run_quick_start(args.workdir)
    print(f"quick start OK: {len(answer['item_ids'])} items, "
          f"{answer.get('num_scored')} scored", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
