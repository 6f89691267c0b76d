"""The modzoo/bullet-* envs: gymnasium contract, determinism, termination, and the behaviour experts."""
from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from modzoo.bullet.envs import env_dims, env_id, make_env, register_envs
from modzoo.bullet.tasks import LEVELS, ROBOTS, TASKS, Task, task_of
from modzoo.errors import EnvError

ROBOT_NAMES = list(ROBOTS)


def test_task_names() -> None:
    assert len(TASKS) == 20
    t = task_of("bullet-hopper-medium-replay-v0")
    assert (t.robot, t.level, t.obs_dim, t.act_dim, t.env_id) == ("hopper", "medium-replay", 15, 3,
                                                                  "modzoo/bullet-hopper-v0")
    assert (task_of("bullet-halfcheetah-medium-expert-v0").robot,
            task_of("bullet-halfcheetah-medium-expert-v0").level) == ("halfcheetah", "medium-expert")
    assert task_of(t) is t and task_of("bullet-hopper-medium-replay-v0") is t  # parsed once, then passed on
    assert str(t) == t.name and isinstance(t, Task)
    assert env_id("bullet-walker2d-random-v0") == "modzoo/bullet-walker2d-v0"
    assert env_id("ant") == "modzoo/bullet-ant-v0"
    assert env_dims("bullet-ant-expert-v0") == (28, 8)
    assert {task_of(t).level for t in TASKS} == set(LEVELS)


@pytest.mark.parametrize("bad", ["hopper-medium-v2", "bullet-hopper-good-v0", "bullet-humanoid-medium-v0", ""])
def test_unknown_name_lists_known(bad: str) -> None:
    with pytest.raises(EnvError) as ei:
        env_id(bad)
    msg = str(ei.value)
    assert "\n" not in msg and "hopper" in msg and "medium-replay" in msg


def test_register_is_idempotent() -> None:
    register_envs()
    register_envs()
    for r in ROBOT_NAMES:
        assert f"modzoo/bullet-{r}-v0" in gymnasium.registry


@pytest.mark.filterwarnings("ignore:.*Box observation space (minimum|maximum) value")
@pytest.mark.parametrize("robot", ROBOT_NAMES)
def test_check_env_and_dims(robot: str) -> None:
    register_envs()
    env = gymnasium.make(env_id(robot))
    assert env.spec is not None and env.spec.max_episode_steps == 1000
    check_env(env.unwrapped, skip_render_check=True)
    assert (env.observation_space.shape[0], env.action_space.shape[0]) == env_dims(robot)
    obs, _ = env.reset(seed=1)
    assert obs.dtype == np.float32 and obs.shape == (env_dims(robot)[0],)
    inner = env.unwrapped._ensure_inner()  # pybullet's own env: the table's dims must be the robot's
    assert (inner.observation_space.shape[0], inner.action_space.shape[0]) == env_dims(robot)
    env.close()


def test_import_modzoo_registers_the_envs() -> None:
    """In a fresh interpreter, `import modzoo` alone makes the ids available to gymnasium.make."""
    import subprocess
    import sys
    code = ("import gymnasium, modzoo; "
            "print(sorted(i for i in gymnasium.registry if i.startswith('modzoo/')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(sorted(f"modzoo/bullet-{r}-v0" for r in ROBOT_NAMES))


@pytest.mark.parametrize("robot", ["hopper", "ant"])
def test_reset_is_deterministic_across_instances(robot: str) -> None:
    """The pybullet port's first reset differs from later ones (ant); ours must not."""
    a = np.full(env_dims(robot)[1], 0.3, np.float32)
    trajs = []
    for _ in range(2):
        env = make_env(robot)
        obs = [env.reset(seed=7)[0]]
        obs += [env.step(a)[0] for _ in range(20)]
        trajs.append(np.stack(obs))
        env.close()
    np.testing.assert_array_equal(trajs[0], trajs[1])


def test_hopper_falls_terminated() -> None:
    env = make_env("hopper", seed=0)
    rng = np.random.default_rng(0)
    for t in range(1000):
        _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, 3).astype(np.float32))
        if term or trunc:
            break
    assert term and not trunc and t < 999


def test_halfcheetah_truncated_at_1000() -> None:
    env = make_env("halfcheetah", seed=0)
    zero = np.zeros(6, np.float32)
    for t in range(1000):
        _, _, term, trunc, _ = env.step(zero)
        assert not term
        if trunc:
            break
    assert trunc and t + 1 == task_of("bullet-halfcheetah-medium-v0").max_episode_steps == 1000


def test_unseeded_envs_do_not_replay_one_stream() -> None:
    """Never seeded, two envs start from different states (they used to replay the warm-up's seed-0 stream)."""
    starts = []
    for _ in range(2):
        env = make_env("hopper")
        starts.append(env.reset()[0])
        env.close()
    assert not np.allclose(starts[0], starts[1])


_ACTOR_PROBE = """
import hashlib, sys
import numpy as np
from modzoo.bullet.experts import TorchActorPolicy, committed_actor
actor = TorchActorPolicy(committed_actor("walker2d", "medium"))
states = np.random.default_rng(0).normal(size=(500, 22)).astype(np.float32)
acts = np.concatenate([actor.forward64(s[None], np.asarray([i])) for i, s in enumerate(states)])
assert actor(states[:1], np.asarray([0])).dtype == np.float32
print(hashlib.sha1(acts.tobytes()).hexdigest())
"""


def test_a_sac_behaviour_actor_acts_the_same_under_every_mkl_code_path() -> None:
    """A dataset collected from an exported SAC actor must be the same file on any CPU, or re-collecting it on a
    new machine turns a grid's finished runs stale. MKL picks its matrix kernels by CPU; ``MKL_CBWR`` makes it
    take another CPU's path here. Through torch the three paths gave three sets of float32 actions, and float64
    ones that differ in their last bits (which moved one action of a million across a float32 rounding step)."""
    import os
    import subprocess
    import sys

    digests = set()
    for branch in ("AUTO", "COMPATIBLE", "AVX2"):
        env = {**os.environ, "MKL_CBWR": branch, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", _ACTOR_PROBE], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


def test_a_sac_behaviour_actor_rounds_a_float64_forward() -> None:
    """The actions are the float64 MLP's, rounded once to float32 (a float32 forward differs from them in the last
    bits): pinned on a CPU too, where MKL's paths happen to agree."""
    import torch

    from modzoo.bullet.experts import TorchActorPolicy, committed_actor, time_feature

    path = committed_actor("walker2d", "medium")
    actor = TorchActorPolicy(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    layers = sorted({k.split(".")[0] for k in sd}, key=int)
    states = np.random.default_rng(1).normal(size=(200, 22)).astype(np.float32)
    t = np.arange(200)
    x = np.concatenate([states, time_feature(t, 1000)[:, None]], axis=1).astype(np.float64)
    for i, name in enumerate(layers):
        x = x @ sd[f"{name}.weight"].double().numpy().T + sd[f"{name}.bias"].double().numpy()
        x = np.maximum(x, 0.0) if i < len(layers) - 1 else np.tanh(np.clip(x, -2.0, 2.0))  # clip_mean 2
    got = np.concatenate([actor(s[None], np.asarray([k])) for k, s in zip(t, states)])
    assert (got == x.astype(np.float32)).mean() > 0.999
    assert np.abs(actor.forward64(states, t) - x).max() < 1e-12
