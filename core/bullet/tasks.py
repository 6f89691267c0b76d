"""A benchmark task as a value, parsed once where a name enters modzoo and passed down from there.

A task name (``bullet-hopper-medium-replay-v0``) used to be a string that every layer split again to find its
robot, level or env dims. :func:`task_of` parses it once into a :class:`Task` (robot, level, dims, env id); the
functions that take a task accept either form, so a caller holding a ``Task`` never has it re-parsed, and a
second kind of task source (a Minari dataset id, say) can become another constructor of the same value.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..errors import EnvError

#: robot -> (pybullet_envs_gymnasium class name, obs_dim, act_dim). The dims are the pybullet robots'
#: fixed sizes; tests check them against the live spaces, so no physics client is needed to know them.
ROBOTS: dict[str, tuple[str, int, int]] = {
    "hopper": ("HopperBulletEnv", 15, 3),
    "halfcheetah": ("HalfCheetahBulletEnv", 26, 6),
    "walker2d": ("Walker2DBulletEnv", 22, 6),
    "ant": ("AntBulletEnv", 28, 8),
}
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

    def __str__(self) -> str:
        return self.name


def unknown_task(name: str) -> EnvError:
    """The one-line error for a name that is no task or robot, listing the known ones."""
    return EnvError(
        f"unknown task or robot {name!r}: use one of the robots {', '.join(ROBOTS)} or a task "
        f"bullet-<robot>-<level>-v0 with level in {', '.join(LEVELS)} (e.g. bullet-hopper-medium-v0)"
    )


@lru_cache(maxsize=None)
def _parse(name: str) -> Task:
    if name in TASKS:
        robot, _, level = name[len("bullet-"): -len("-v0")].partition("-")
        return Task(name, robot, level)
    raise unknown_task(name)


def task_of(task: str | Task) -> Task:
    """The :class:`Task` of a task name (a ``Task`` passes through as it is).

    Raises :class:`EnvError` listing the known names for anything that is not one of :data:`TASKS`.
    """
    return task if isinstance(task, Task) else _parse(str(task))


def robot_of(task_or_robot: str | Task) -> str:
    """The robot of a task (name or value), an env id (``modzoo/bullet-ant-v0``) or a bare robot name."""
    if isinstance(task_or_robot, Task):
        return task_or_robot.robot
    if task_or_robot in ROBOTS:
        return task_or_robot
    if task_or_robot.startswith("modzoo/bullet-") and task_or_robot.endswith("-v0"):
        robot = task_or_robot[len("modzoo/bullet-"): -len("-v0")]
        if robot in ROBOTS:
            return robot
    return task_of(task_or_robot).robot
