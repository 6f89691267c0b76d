"""Bullet locomotion environments for the D4RL ``bullet-*`` tasks, registered as ``modzoo/bullet-<robot>-v0``.

D4RL recorded on pybullet's ``HopperBulletEnv-v0`` and friends, whose legacy ``pybullet_envs`` no longer imports with
current gym, so modzoo wraps the gymnasium port (``pybullet_envs_gymnasium``). ``reset(seed=s)`` is deterministic:
the port's first reset builds the scene and the ant settles differently there than after later resets (which
restore a saved state), so that reset is burnt. ``terminated`` is a fall (pybullet's ``alive < 0``; halfcheetah
never falls); ``truncated`` is gymnasium's ``TimeLimit`` at D4RL's 1000 steps.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

import gymnasium
import numpy as np

from ..errors import EnvError
from .tasks import MAX_EPISODE_STEPS, ROBOTS, TASKS, AnyTask, MinariTask, Task, robot_of, task_of, unknown_task


def env_id(task_or_robot: str | Task) -> str:
    """The gymnasium id for a task or robot: ``bullet-hopper-medium-v0`` -> ``modzoo/bullet-hopper-v0``."""
    return f"modzoo/bullet-{robot_of(task_or_robot)}-v0"


def _is_robot(task_or_robot: str | AnyTask) -> bool:
    """A bare robot name or one of modzoo's env ids: no task to parse."""
    return isinstance(task_or_robot, str) and (task_or_robot in ROBOTS or task_or_robot.startswith("modzoo/bullet-"))


def env_dims(task_or_robot: str | AnyTask) -> tuple[int, int]:
    """``(obs_dim, act_dim)`` of a task's env, from the static table or the Minari dataset's spaces (no physics)."""
    if _is_robot(task_or_robot):
        return ROBOTS[robot_of(task_or_robot)][1:]
    t = task_of(task_or_robot)
    return t.obs_dim, t.act_dim


@contextlib.contextmanager
def _quiet(stream: Any) -> Iterator[None]:
    """Silence a C-level stream: pybullet's ``argv[0]=`` and build time would land amid CLI output and progress bars."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. stdout replaced by a StringIO
        yield
        return
    stream.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


class BulletLocomotionEnv(gymnasium.Env):
    """One pybullet robot behind gymnasium's interface; no physics starts before the first reset (spaces are free)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 60}

    def __init__(self, robot: str, render_mode: str | None = None) -> None:
        if robot not in ROBOTS:
            raise unknown_task(robot)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise EnvError(f"render_mode {render_mode!r} is not supported: use 'rgb_array' or None")
        self.robot, self.render_mode = robot, render_mode
        _, obs_dim, act_dim = ROBOTS[robot]
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
        self._inner: Any = None

    def _ensure_inner(self) -> Any:
        if self._inner is None:
            with _quiet(sys.stderr):  # pybullet's "pybullet build time: ..." line, once per process
                import pybullet_envs_gymnasium.gym_locomotion_envs as loco

            cls = getattr(loco, ROBOTS[self.robot][0])
            with _quiet(sys.stdout):
                self._inner = cls(render_mode=self.render_mode)
                self._inner.reset(seed=0)  # the warm-up: burn the first reset (module docstring)
        return self._inner

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        inner = self._ensure_inner()
        if seed is None and inner.np_random is not self.np_random:
            # This env's own stream (entropy-seeded if never seeded): unseeded envs must not replay the warm-up's 0.
            inner.np_random = inner.robot.np_random = self.np_random
        obs, info = inner.reset(seed=seed)
        # Share one generator so gymnasium's seeding contract (same seed -> same RNG state) holds.
        self._np_random = inner.np_random
        return np.asarray(obs, dtype=np.float32), dict(info)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._inner is None:
            raise EnvError("step() called before reset(): call env.reset(seed=...) first")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape:
            raise EnvError(f"action of shape {action.shape} for {self.robot}: expected {self.action_space.shape}")
        obs, reward, terminated, truncated, info = self._inner.step(action)
        return np.asarray(obs, dtype=np.float32), float(reward), bool(terminated), bool(truncated), dict(info)

    def render(self) -> np.ndarray | None:
        return None if self._inner is None or self.render_mode is None else self._inner.render()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None


def register_envs() -> None:
    """Register ``modzoo/bullet-<robot>-v0`` and each task name (``gymnasium.make(task)`` as with D4RL); idempotent."""
    ids = {**{f"modzoo/bullet-{robot}-v0": robot for robot in ROBOTS}, **{name: robot_of(name) for name in TASKS}}
    for eid, robot in ids.items():
        if eid not in gymnasium.registry:  # entry point as a string: the spec serializes (Minari)
            gymnasium.register(id=eid, entry_point="modzoo.bullet.envs:BulletLocomotionEnv",
                               max_episode_steps=MAX_EPISODE_STEPS, kwargs={"robot": robot})


def make_env(task: str | AnyTask, seed: int | None = None, render_mode: str | None = None) -> gymnasium.Env:
    """A task's (or robot's) env with the 1000-step limit (a Minari task's: its recorded evaluation env). ``seed``
    resets it and seeds its action space (later resets stay reproducible); no passive checker (slow; tests check)."""
    register_envs()
    t = None if _is_robot(task) else task_of(task)
    spec = t.spec() if isinstance(t, MinariTask) else env_id(task)
    env = gymnasium.make(spec, render_mode=render_mode, disable_env_checker=True)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
