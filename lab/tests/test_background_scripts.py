"""The update of the background checkout (lab/experiments/sync-checkout.sh) must never lose a summary.

The background grid writes summaries into its own checkout; the same files are committed in the main one after
collect-background.sh copies them. Pulling the main commit into the background checkout must refuse, touching
nothing, while the background holds a summary newer than the commit, and must succeed once they agree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYNC = ROOT / "experiments" / "sync-checkout.sh"

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("bash") is None,
                                reason="needs git and bash")

ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=ENV, check=True, capture_output=True, text=True).stdout


def write(repo: Path, rel: str, text: str) -> None:
    path = repo / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def commit(repo: Path, files: dict[str, str], message: str) -> None:
    for rel, text in files.items():
        write(repo, rel, text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


def sync(here: Path, bg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SYNC), str(here), str(bg)], env=ENV, capture_output=True, text=True)


RESULT = "lab/experiments/results/g/task/arm/seed0/result.json"
SWAPS = "lab/experiments/results/g/task/arm/seed1/swaps.json"


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    here, bg = tmp_path / "here", tmp_path / "bg"
    here.mkdir()
    git(here, "init", "-q")
    commit(here, {RESULT: "first training\n", "docs/report.md": "old report\n"}, "first")
    git(tmp_path, "clone", "-q", str(here), str(bg))
    # the background trains the run again (a tracked summary changes) and a later swap grows another summary
    write(bg, RESULT, "trained again\n")
    write(bg, SWAPS, "two swaps\n")
    write(bg, "docs/report.md", "report the grid wrote\n")
    return here, bg


def test_refuses_and_touches_nothing_while_the_background_holds_a_newer_summary(repos: tuple[Path, Path]) -> None:
    here, bg = repos
    # collected too early: the commit has the rebuilt result but only the first of the two swaps
    commit(here, {RESULT: "trained again\n", SWAPS: "one swap\n", "docs/report.md": "new report\n"}, "collect")
    run = sync(here, bg)
    assert run.returncode == 1
    assert SWAPS in run.stderr and "collect-background.sh" in run.stderr
    assert RESULT not in run.stderr  # it matches the commit: not named as a problem
    # nothing changed there: the rebuilt result is not put back to the first training, the newer swaps stay
    assert (bg / RESULT).read_text() == "trained again\n"
    assert (bg / SWAPS).read_text() == "two swaps\n"
    assert (bg / "docs/report.md").read_text() == "report the grid wrote\n"
    assert git(bg, "rev-parse", "HEAD") != git(here, "rev-parse", "HEAD")


def test_fast_forwards_once_every_summary_matches(repos: tuple[Path, Path]) -> None:
    here, bg = repos
    commit(here, {RESULT: "trained again\n", SWAPS: "two swaps\n", "docs/report.md": "new report\n"}, "collect")
    run = sync(here, bg)
    assert run.returncode == 0, run.stderr
    assert git(bg, "rev-parse", "HEAD") == git(here, "rev-parse", "HEAD")
    assert git(bg, "status", "--porcelain") == ""
    assert (bg / "docs/report.md").read_text() == "new report\n"


def test_leaves_a_summary_the_commit_does_not_hold(repos: tuple[Path, Path]) -> None:
    here, bg = repos
    commit(here, {RESULT: "trained again\n"}, "collect the rebuilt result only")
    run = sync(here, bg)
    assert run.returncode == 0, run.stderr
    assert (bg / SWAPS).read_text() == "two swaps\n"  # not collected yet: still there for the next collect


def test_refuses_while_code_there_was_changed_by_hand(repos: tuple[Path, Path]) -> None:
    here, bg = repos
    commit(here, {RESULT: "trained again\n", SWAPS: "two swaps\n", "core/x.py": "a = 1\n"}, "collect")
    assert sync(here, bg).returncode == 0  # the code file exists there now ...
    commit(here, {"core/x.py": "a = 2\n"}, "change it")
    write(bg, "core/x.py", "a = 3\n")  # ... and is edited there by hand
    write(bg, SWAPS, "three swaps\n")
    run = sync(here, bg)
    assert run.returncode == 1
    assert "core/x.py" in run.stderr and "local changes outside its summaries" in run.stderr
    assert (bg / SWAPS).read_text() == "three swaps\n" and (bg / "core/x.py").read_text() == "a = 3\n"
