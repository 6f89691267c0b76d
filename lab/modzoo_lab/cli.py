"""The lab's commands, added to ``modzoo``'s CLI through the ``modzoo.commands`` entry point.

``modzoo experiment`` (grids, their status and reports) and ``modzoo data train-behaviour`` (SAC experts) are lab
work: the library's CLI (:mod:`modzoo.cli`) knows nothing of them and loads :func:`add_commands` when it builds
its parser. Only argparse is imported here; each handler imports the lab module it drives when it runs.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from modzoo.bullet.tasks import robot_of
from modzoo.errors import ConfigError, ModzooError


def add_commands(sub: Any) -> None:
    """Add the lab's commands to ``modzoo``'s subparsers (``sub``); ``data`` exposes its own as ``.commands``."""
    _add_experiment(sub)
    _add_train_behaviour(sub.choices["data"])


def _exit_on_sigterm() -> None:
    """A SIGTERM (``kill``, a scheduler's stop) ends the grid as Ctrl-C does: through its cleanup, which stops the
    pool's workers; by default it would end this process alone and leave them training as orphans. A second one
    (``timeout`` signals the whole process group) must not break into that cleanup."""
    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def cmd_experiment(args: argparse.Namespace) -> int:
    from .grid.plan import load_experiment
    from .grid.report import write_report
    from .grid.runner import run_experiment
    from .grid.status import format_status, format_time_left, grid_status, seconds_left

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give at least 1 (or leave it out for the experiment's own)")
    if args.status:
        exp = load_experiment(args.name, args.overrides)
        rows, swaps = grid_status(exp, rebuild=args.rebuild, rebuild_only=args.rebuild_only)
        print(format_status(str(exp.name), rows, swaps))
        left = seconds_left(rows, swaps)
        if left and left["wall"]:  # None before a run has finished, 0 once none is left to run
            print(format_time_left(left, int(args.workers or exp.get("workers") or 1)))
        return 0
    if args.report_only:
        path = write_report(load_experiment(args.name, args.overrides))
        print(f"wrote {path}")
        return 0
    _exit_on_sigterm()
    summary = run_experiment(args.name, args.overrides, backend=args.backend, workers=args.workers,
                             train=not args.swaps_only, rebuild=args.rebuild, rebuild_only=args.rebuild_only)
    print(f"experiment {summary['experiment']}: {summary['runs']} runs, {summary['failed']} failed, "
          f"{summary['seconds']:.0f} s")
    return 1 if summary["failed"] else 0


def _add_experiment(sub: Any) -> None:
    p = sub.add_parser("experiment", help="run (or resume) a grid from lab/experiments/NAME.yaml and write its report")
    p.add_argument("name", help="experiment name in lab/experiments/ or a path to its YAML")
    p.add_argument("--backend", choices=["local", "ray"], default=None, help="default: the experiment's (local)")
    p.add_argument("--workers", type=int, default=None, help="parallel runs on the local pool")
    p.add_argument("--report-only", action="store_true", help="regenerate the report from the run summaries")
    p.add_argument("--status", action="store_true",
                   help="where each run stands (finished with its score, running at step N, interrupted, failed, "
                        "stale) and the swaps done; changes nothing")
    p.add_argument("--swaps-only", action="store_true",
                   help="train nothing: evaluate the swaps whose runs have finished, then write the report")
    p.add_argument("--rebuild", action="store_true",
                   help="also train again, after the runs still to train, the runs finished elsewhere (a summary "
                        "here, no run dir) whose checkpoints a swap still to run needs; each is compared with its "
                        "committed summary, whose swaps it keeps if it reproduces it and which is kept beside it "
                        "(before-rebuild/) if not. With --status: where the grid stands counting those runs")
    p.add_argument("--rebuild-only", action="append", default=[], metavar="PATTERN",
                   help="--rebuild, but only the runs whose key (task/arm/seedN) matches this glob, e.g. "
                        "'bullet-walker2d-medium-v0/idql-*/seed2' (repeatable; the runs whose guidance they reuse "
                        "come along): the few rebuilds that close some swaps within one machine's lifetime")
    p.add_argument("overrides", nargs="*", help="e.g. seeds=[0,1] budget.policy_steps=1000")
    p.set_defaults(func=cmd_experiment)


def _add_train_behaviour(data: argparse.ArgumentParser) -> None:
    p = data.commands.add_parser("train-behaviour", help="train a SAC behaviour policy (stable-baselines3; resumable)")
    p.add_argument("env", metavar="ENV", help="robot (halfcheetah, walker2d, hopper, ant) or task name")
    p.add_argument("--steps", type=int, default=1_000_000,
                   help="total env steps (default 1000000, rl-baselines3-zoo's)")
    p.add_argument("--run-dir", help="checkpoint directory (default runs/behaviour/<robot>); an existing run resumes")
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--net-arch", default="400,300",
                   help="hidden sizes of actor and critics (default 400,300, the zoo's)")
    p.add_argument("--lr-schedule", default="linear", choices=["linear", "constant"],
                   help="7.3e-4 decayed linearly to 0 over --steps (the zoo's lin_7.3e-4), or constant")
    p.add_argument("--buffer-size", type=int, default=300_000)
    p.add_argument("--time-feature", type=int, default=1000, metavar="STEPS",
                   help="append the zoo's time feature (1 - t/STEPS) to what SAC sees; 0: none. "
                        "Datasets record the env's observation either way")
    p.add_argument("--export-to", help="after training, write behaviour-<robot>-expert.pt (best snapshot) and "
                                       "behaviour-<robot>-medium.pt here (modzoo's bundled ones: core/bullet/assets)")
    p.add_argument("--export-only", action="store_true", help="do not train; only export from the existing run")
    p.add_argument("--pack-to", metavar="DIR", help="do not train; write a compact copy of the run to DIR that resumes "
                                                    "with --run-dir DIR (model, progress, chosen snapshots, the newest "
                                                    "--keep-transitions of its replay)")
    p.add_argument("--keep-transitions", type=int, default=100_000)
    p.add_argument("--medium-return", type=float, default=None,
                   help="target return for the medium snapshot (default: d4rl-pybullet's medium return)")
    p.set_defaults(func=cmd_train_behaviour)


def cmd_train_behaviour(args: argparse.Namespace) -> int:
    from .behaviour import TrainConfig, export_choice, pack_run, train_behaviour

    robot = robot_of(args.env)
    run_dir = Path(args.run_dir or Path("runs") / "behaviour" / robot)
    if args.pack_to:
        packed = pack_run(run_dir, args.pack_to, keep_transitions=args.keep_transitions)
        print(f"packed {run_dir} at step {packed['step']} into {args.pack_to}: {packed['snapshots']} snapshots, "
              f"{packed['transitions']} replay transitions; resume with --run-dir {args.pack_to}")
        return 0
    if not args.export_only:
        try:
            net = tuple(int(h) for h in args.net_arch.split(","))
        except ValueError:
            raise ModzooError(f"--net-arch {args.net_arch!r} is not a comma-separated list of sizes, "
                              "e.g. 400,300") from None
        for name in ("steps", "eval_every", "eval_episodes", "buffer_size"):
            if getattr(args, name) < 1:
                raise ModzooError(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1")
        cfg = TrainConfig(total_steps=args.steps, eval_every=args.eval_every, eval_episodes=args.eval_episodes,
                          seed=args.seed, net_arch=net, lr_schedule=args.lr_schedule, buffer_size=args.buffer_size,
                          time_feature=args.time_feature)
        best = train_behaviour(robot, run_dir, cfg, log=lambda s: print(s, flush=True))
        print(f"best snapshot: {best}")
    if args.export_to:
        for which, path in export_choice(robot, run_dir, Path(args.export_to), args.medium_return).items():
            print(f"exported {which}: {path}")
    return 0
