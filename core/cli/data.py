"""The ``modzoo data`` command (``fetch``, ``collect``, ``info``, ``export-minari``), which
:func:`add_data_commands` adds to the main parser."""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from ..bullet import minari_data
from ..bullet.collect import collect, collect_replay_from_run
from ..bullet.data import dataset_path, export_minari, load_dataset
from ..bullet.minari_data import is_minari_id
from ..bullet.scores import DATASET_URLS, normalized_score
from ..bullet.tasks import bullet_task, task_of
from ..errors import DatasetError, EnvError
from ..progress import progress_bar


def add_data_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``data`` with its subcommands to an ``argparse`` subparsers object; returns the parser."""
    data = subparsers.add_parser("data", help="fetch, collect, inspect Bullet D4RL datasets",
                                 description="Bullet D4RL datasets: D4RL's HDF5 layout, cached in $D4RL_DATASET_DIR "
                                             "(default ~/.d4rl/datasets).")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    data.commands = sub  # where another package adds a subcommand (the lab's train-behaviour)

    p = sub.add_parser("fetch", help="download a dataset from D4RL's server, or a Minari id through Minari (network)")
    p.add_argument("name", metavar="NAME", help="task name, e.g. bullet-hopper-medium-v0, or a Minari id such as "
                                                "mujoco/hopper/medium-v0")
    p.add_argument("--out", help="file to write (default: the D4RL cache path)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server (default 10)")
    p.add_argument("--url", help="download from this URL instead of D4RL's")
    p.add_argument("--sha256", help="expected sha256 of the file (D4RL publishes none); a mismatch keeps nothing")
    p.add_argument("--force", action="store_true", help="replace an existing file at the destination")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("export-minari", help="write a modzoo Bullet dataset as a Minari dataset (needs minari[create])")
    p.add_argument("name", metavar="TASK", help="task name, e.g. bullet-hopper-medium-v0")
    p.add_argument("--out", help="the Minari id to create (default modzoo/<robot>/<level>-v0)")
    p.add_argument("--file", help="the D4RL-format file to export (default: the task's file in the D4RL cache)")
    p.set_defaults(func=cmd_export_minari)

    p = sub.add_parser("collect", help="generate a dataset with modzoo's behaviour policies (no network)")
    p.add_argument("name", metavar="NAME", help="task name, e.g. bullet-hopper-medium-v0")
    p.add_argument("--transitions", type=int, default=None,
                   help="number of transitions (default: D4RL's size for the level)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="file to write (default: the D4RL cache path)")
    p.add_argument("--behaviour-dir", help="directory with exported SAC actors behaviour-<robot>-{medium,expert}.pt "
                                           "(default: modzoo's bundled ones)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1, as for training; the behaviour actors act in numpy)")
    p.add_argument("--no-reuse", action="store_true",
                   help="medium-expert: simulate both halves even if the cached medium/expert files match")
    p.add_argument("--from-run",
                   help="medium-replay only: write the replay buffer of this train-behaviour run (D4RL's exact recipe)")
    p.add_argument("--force", action="store_true", help="replace an existing file at the destination")
    p.add_argument("--upto-step", type=int,
                   help="with --from-run: last step to include (default: the run's medium snapshot)")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("info", help="summarize a dataset file or a cached dataset")
    p.add_argument("target", metavar="PATH_OR_NAME")
    p.add_argument("--task", help="task the file belongs to, if neither its attributes nor its name say")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    return data


# ------------------------------------------------------------------------------------------------ fetch
def cmd_export_minari(args: argparse.Namespace) -> int:
    dataset_id = export_minari(args.name, args.out, args.file)
    ds = load_dataset(dataset_id)
    print(f"wrote Minari dataset {dataset_id} to {minari_data.datasets_path() / dataset_id}: {len(ds)} transitions, "
          f"{len(ds.episode_returns())} episodes (load it with minari.load_dataset({dataset_id!r}))")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download D4RL's file to a temp name, hash it, validate it loads, then rename into place; a Minari id is
    fetched by Minari's own download."""
    if is_minari_id(args.name):
        where = minari_data.fetch(args.name)
        ds = load_dataset(args.name)
        print(f"fetched {args.name} to {where}: {len(ds)} transitions, {len(ds.episode_returns())} episodes")
        return 0
    try:
        task_of(args.name)
    except EnvError as exc:
        raise DatasetError(str(exc)) from exc
    url = args.url or DATASET_URLS[args.name]
    out = Path(args.out).expanduser() if args.out else dataset_path(args.name)
    _refuse_overwrite(out, args.force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    build = f"`modzoo data collect {args.name}`"
    h = hashlib.sha256()
    try:
        try:
            resp = urllib.request.urlopen(url, timeout=args.timeout)
        except (urllib.error.URLError, socket.timeout, OSError, ValueError) as exc:  # ValueError: a malformed URL
            raise DatasetError(f"cannot download {args.name} from {url} ({getattr(exc, 'reason', exc)}); without "
                               f"network build it locally with {build}") from exc
        total = int(resp.headers.get("Content-Length") or 0) or None
        with resp, open(tmp, "wb") as f, progress_bar(total=total, unit="B", unit_scale=True,
                                                      desc=f"fetch {args.name}") as bar:
            while True:
                try:
                    chunk = resp.read(1 << 20)
                except (socket.timeout, OSError, http.client.HTTPException) as exc:  # IncompleteRead is the latter
                    raise DatasetError(f"download of {url} broke off ({exc}); retry, or build it with {build}") from exc
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
        got = tmp.stat().st_size
        if total is not None and got != total:
            raise DatasetError(f"download of {url} is incomplete ({got} of {total} bytes), nothing was written to "
                               f"{out}; retry, or build it with {build}")
        digest = h.hexdigest()
        if args.sha256 and digest != args.sha256.lower():
            raise DatasetError(f"download of {url} has sha256 {digest}, not the expected {args.sha256}; nothing was "
                               f"written to {out}")
        # D4RL publishes no checksums: beyond --sha256, the check is that the file parses and validates for its task,
        # and the digest is kept beside the file (<file>.sha256) so a later copy can be compared with it.
        try:
            ds = load_dataset(str(tmp), task=args.name)
        except DatasetError as exc:
            raise DatasetError(f"the download from {url} is not a valid {args.name} dataset, nothing was written to "
                               f"{out} ({exc}); retry later or build it with {build}") from exc
        os.replace(tmp, out)
        out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n")
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"{out}: {len(ds)} transitions, sha256 {digest} (also in {out.name}.sha256)")
    return 0


def _refuse_overwrite(out: Path, force: bool) -> None:
    """A dataset already at the destination (perhaps a real D4RL download) is replaced only when asked."""
    if out.exists() and not force:
        raise DatasetError(f"{out} already exists; pass --force to replace it, or move it aside first")


# ---------------------------------------------------------------------------------------------- collect
def cmd_collect(args: argparse.Namespace) -> int:
    import torch
    if args.threads < 1:
        raise DatasetError(f"--threads {args.threads}: give at least 1")
    torch.set_num_threads(args.threads)
    try:
        bullet_task(args.name, "modzoo data collect")
    except EnvError as exc:
        raise DatasetError(str(exc)) from exc
    _refuse_overwrite(Path(args.out).expanduser() if args.out else dataset_path(args.name), args.force)
    if args.from_run:
        res = collect_replay_from_run(args.name, args.from_run, out=args.out, upto_step=args.upto_step)
        a = res.attrs
        print(f"wrote {res.path}: {a['transitions']} transitions, {a['episodes']} episodes, "
              f"mean return {a['mean_return']:.1f} (normalized {a['normalized_score']:.1f})")
        return 0
    res = collect(args.name, transitions=args.transitions, seed=args.seed, out=args.out,
                  progress=not args.no_progress, behaviour_dir=args.behaviour_dir, reuse=not args.no_reuse)
    a = res.attrs
    print(f"wrote {res.path}: {a['transitions']} transitions, {a['episodes']} episodes, mean return "
          f"{a['mean_return']:.1f} ± {a['std_return']:.1f} (normalized {a['normalized_score']:.1f}), "
          f"{a['steps_per_second']:.0f} steps/s")
    for s in a["segments"] if len(a["segments"]) > 1 else []:
        print(f"  {s['label']}: {s['transitions']} transitions, mean return {s['mean_return']:.1f} "
              f"(normalized {s['normalized_score']:.1f})")
    return 0


# ------------------------------------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    ds = load_dataset(args.target, task=args.task)
    rets = ds.episode_returns()
    norm = np.asarray(normalized_score(ds.name, rets)).reshape(-1)
    recipe = {k: ds.attrs[k] for k in ("command", "seed", "modzoo_version", "generator", "created") if k in ds.attrs}
    info = {
        "path": ds.path, "task": ds.name, "transitions": len(ds), "episodes": int(len(rets)),
        "obs_dim": ds.obs_dim, "act_dim": ds.act_dim, "terminals": int(ds.terminals.sum()),
        "return_mean": float(rets.mean()), "return_std": float(rets.std()),
        "return_min": float(rets.min()), "return_max": float(rets.max()),
        "normalized_mean": float(norm.mean()), "normalized_std": float(norm.std()),
        "episode_length_mean": float(ds.episode_lengths().mean()),
        "fingerprint": ds.fingerprint, "recipe": recipe, "segments": ds.attrs.get("segments"),
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"{info['task']}  ({info['path']})", show_header=False)
    t.add_row("transitions (q-learning)", f"{info['transitions']:,}")
    t.add_row("episodes",
              f"{info['episodes']:,} (mean length {info['episode_length_mean']:.0f}, {info['terminals']} terminal)")
    t.add_row("obs / act dims", f"{info['obs_dim']} / {info['act_dim']}")
    t.add_row("episode return", f"{info['return_mean']:.1f} ± {info['return_std']:.1f} "
                                f"(min {info['return_min']:.1f}, max {info['return_max']:.1f})")
    t.add_row("normalized score", f"{info['normalized_mean']:.1f} ± {info['normalized_std']:.1f}")
    t.add_row("fingerprint", info["fingerprint"])
    for k, v in info["recipe"].items():
        t.add_row(k, str(v))
    for label, text in recipe_rows(info["task"], info["segments"]):
        t.add_row(label, text)
    Console().print(t)
    return 0


def recipe_rows(task: str, segments: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    """The recipe a collected file records, one (label, text) row per fact and segment: the behaviour policy and
    its own score, the noise, the size, and the segment's own episodes' score.

    Why each: a dataset's name says nothing of how it was made, and modzoo's ``bullet-*`` files are made here, not
    D4RL's; a reader comparing a policy's score with its data needs the behaviour policy's own score (what the
    noise took away) and the data's (what the policy is trained on), which the file keeps with it."""
    if not segments:
        return [("recipe", "not recorded in this file (not made by `modzoo data collect`); docs/datasets.md")]
    rows = []
    for s in segments:
        name = f"segment {s['label']}"
        rows.append((f"{name}: behaviour policy", str(s.get("policy"))))
        own = s.get("snapshot_eval_return")
        rows.append((f"{name}: its own score",
                     f"return {own:.1f} at that step (its training's evaluation)" if own is not None
                     else "as its description above says (SAC actors: their evaluation return when exported); "
                          "not recorded for pybullet's bundled experts (docs/datasets.md measures them)"))
        start, end = s.get("sigma_start"), s.get("sigma_end")
        if start is None:
            noise = str(s.get("noise", "none recorded"))
        elif start == end == 0:
            noise = "none"
        else:
            falling = "" if start == end else f" falling to {end} across the segment"
            noise = f"{s.get('noise', 'gaussian')}, sigma {start}{falling}"
        rows.append((f"{name}: action noise", noise))
        rows.append((f"{name}: size", f"{s['transitions']:,} steps, {s.get('episodes', 'n/a')} episodes"))
        if "std_return" in s:
            zero = float(normalized_score(task, 0.0))
            norm_std = float(normalized_score(task, s["std_return"])) - zero
            rows.append((f"{name}: data's own score",
                         f"return {s['mean_return']:.1f} ± {s['std_return']:.1f}, normalized "
                         f"{float(normalized_score(task, s['mean_return'])):.1f} ± {norm_std:.1f}"))
        else:
            rows.append((f"{name}: data's own score", f"return {s['mean_return']:.1f} (spread not recorded)"))
    return rows
