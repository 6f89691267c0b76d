"""Style rules ruff does not check: no explicit backslash line continuations in the repository's Python files
(break lines inside brackets instead)."""
from __future__ import annotations

import io
import os
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Directories that hold no source of ours: virtual environments, build output, caches, runs.
SKIP_DIRS = {"build", "dist", "runs", "node_modules", "__pycache__"}
# Files another change is editing; each entry goes once its continuations are gone.
PENDING: set[str] = set()
# Tokens that end a line; a token on a later line than the one before it, with none of these between, was
# joined to it by a backslash.
LINE_ENDS = {tokenize.NEWLINE, tokenize.NL}


def backslash_continuations(source: str) -> list[int]:
    """Line numbers of the lines that end in an explicit line continuation (a ``\\`` outside any string or
    comment, joining the next line to this one)."""
    found = []
    prev = None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if prev is not None and prev.type not in LINE_ENDS and tok.start[0] > prev.end[0]:
            found.append(prev.end[0])
        prev = tok
    return found


def python_files(root: Path = ROOT) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info"))
        out += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return out


def continuations_in(root: Path, skip: set[str] = frozenset()) -> list[str]:
    """``path:line`` of every explicit line continuation in the .py files under ``root``."""
    files = [p for p in python_files(root) if p.relative_to(root).as_posix() not in skip]
    return [f"{p.relative_to(root).as_posix()}:{line}" for p in files
            for line in backslash_continuations(p.read_text(encoding="utf-8"))]


def test_no_backslash_continuations() -> None:
    assert len(python_files()) > 50  # the walk found the repository's sources
    bad = continuations_in(ROOT, PENDING)
    assert not bad, "explicit backslash line continuations (break inside brackets instead):\n" + "\n".join(bad)


def test_the_check_finds_a_continuation(tmp_path: Path) -> None:
    """The check fails on a file with a continuation, and only on the continuation: a backslash at the end of a
    line inside a string, a docstring or a comment is not one."""
    src = tmp_path / "joined.py"
    src.write_text(
        '"""Docstring with a shell example:\n'
        '    python run.py --flag \\\\\n'
        '        --other\n'
        '"""\n'
        'x = 1 + \\\n'                     # line 5: a continuation
        '    2\n'
        's = "a \\\n'                      # line 7: a backslash-newline inside a string literal
        'b"\n'
        'y = (1 +  # a comment \\\n'
        '     2)\n'
        'if x and \\\n'                    # line 11: a continuation
        '        y:\n'
        '    z = f"{x}" \\\n'              # line 13: a continuation after an f-string
        '        "tail"\n'
    )
    assert backslash_continuations(src.read_text()) == [5, 11, 13]
    assert backslash_continuations("x = (1 +\n     2)\n") == []
    # the repository-wide check names the file and lines
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "clean.py").write_text("x = (1 +\n     2)\n")
    assert continuations_in(tmp_path) == ["joined.py:5", "joined.py:11", "joined.py:13"]
