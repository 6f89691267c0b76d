"""A benchmark task as a value, parsed once where a name enters modzoo and passed down from there.

:func:`task_of` parses a name (``bullet-hopper-medium-v0`` or a Minari id) into a :class:`Task` or :class:`MinariTask`;
functions that take a task accept either form.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import gymnasium

from ..errors import EnvError
from . import minari_data

#: robot -> (pybullet_envs_gymnasium class, obs_dim, act_dim): fixed sizes, tested against the live spaces.
ROBOTS: dict[str, tuple[str, int, int]] = {
    "hopper": ("HopperBulletEnv", 15, 3), "halfcheetah": ("HalfCheetahBulletEnv", 26, 6),
    "walker2d": ("Walker2DBulletEnv", 22, 6), "ant": ("AntBulletEnv", 28, 8)}
#: D4RL's dataset levels, in D4RL's order.
LEVELS: tuple[str, ...] = ("random", "medium", "expert", "medium-expert", "medium-replay")
#: Every D4RL ``bullet-*`` task name.
TASKS: tuple[str, ...] = tuple(f"bullet-{r}-{lvl}-v0" for r in ROBOTS for lvl in LEVELS)
#: Episode length of D4RL's locomotion tasks (and of pybullet's registrations).
MAX_EPISODE_STEPS = 1000


@dataclass(frozen=True)
class Task:
    """One D4RL ``bullet-*`` task: its name, the robot whose env it is evaluated on, and the data level."""

    name: str
    robot: str
    level: str

    @property
    def obs_dim(self) -> int:
        return ROBOTS[self.robot][1]

    @property
    def act_dim(self) -> int:
        return ROBOTS[self.robot][2]

    @property
    def env_id(self) -> str:
        """The gymnasium id modzoo registers for the robot (every level shares it)."""
        return f"modzoo/bullet-{self.robot}-v0"

    #: The time limit: an evaluation episode shorter than this was terminated by the env (the robot fell).
    max_episode_steps = MAX_EPISODE_STEPS

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class MinariTask:
    """A task whose data is a Minari dataset: dims, evaluation env and reference scores all come from it."""

    name: str
    obs_dim: int
    act_dim: int
    env_spec: str  # the evaluation env's gymnasium EnvSpec, as JSON
    ref_min_score: float | None
    ref_max_score: float | None
    act_high: float = 1.0

    @property
    def env_id(self) -> str:
        return str(json.loads(self.env_spec)["id"])

    def spec(self) -> Any:
        """The gymnasium ``EnvSpec`` to evaluate on."""
        return gymnasium.envs.registration.EnvSpec.from_json(self.env_spec)

    @property
    def max_episode_steps(self) -> int | None:
        """The evaluation env's time limit (None where its spec sets none)."""
        limit = json.loads(self.env_spec).get("max_episode_steps")
        return int(limit) if limit else None

    def __str__(self) -> str:
        return self.name


AnyTask = Task | MinariTask


def unknown_task(name: str) -> EnvError:
    """The one-line error for a name that is no task or robot, listing the known ones."""
    return EnvError(f"unknown task or robot {name!r}: use one of the robots {', '.join(ROBOTS)} or a task "
                    f"bullet-<robot>-<level>-v0 with level in {', '.join(LEVELS)} (e.g. bullet-hopper-medium-v0), "
                    f"or a Minari dataset id namespace/name-vN")


@lru_cache(maxsize=None)
def _parse(name: str) -> Task | MinariTask:
    if name in TASKS:
        robot, _, level = name[len("bullet-"): -len("-v0")].partition("-")
        return Task(name, robot, level)
    if minari_data.is_minari_id(name):
        return MinariTask(name, **minari_data.metadata(name))
    raise unknown_task(name)


def task_of(task: str | AnyTask) -> AnyTask:
    """A :class:`Task` for a ``bullet-*`` name, a :class:`MinariTask` for a Minari id (a value passes through);
    :class:`EnvError` listing the known names otherwise, DatasetError for an unreadable Minari id."""
    return task if isinstance(task, (Task, MinariTask)) else _parse(str(task))


def bullet_task(task: str | AnyTask, what: str) -> Task:
    """``task`` as a Bullet task, or one line saying that ``what`` exists for Bullet tasks only."""
    if isinstance(task, MinariTask) or (isinstance(task, str) and minari_data.is_minari_id(task)):
        raise EnvError(f"{what} works on modzoo's Bullet tasks (bullet-<robot>-<level>-v0), not the Minari dataset "
                       f"{str(task)!r}")
    return task_of(task)  # type: ignore[return-value]


def robot_of(task_or_robot: str | Task) -> str:
    """The robot of a task (name or value), an env id (``modzoo/bullet-ant-v0``) or a bare robot name."""
    for robot in ROBOTS:  # a Task value matches no string here and passes through bullet_task
        if task_or_robot in (robot, f"modzoo/bullet-{robot}-v0"):
            return robot
    return bullet_task(task_or_robot, "a robot").robot
