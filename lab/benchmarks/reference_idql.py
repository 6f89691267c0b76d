"""What the authors' IDQL code scores on one of modzoo's datasets, at a budget modzoo's grid uses.

The IDQL counterpart of ``reference_score.py`` (issue #41 item 7): if modzoo's ``idql-joint`` scores far from the
authors' own code on the same data at the same number of steps, one of them is not IDQL. The reference
(github.com/philippe-eecs/IDQL, JAX/flax) stays OUTSIDE this project and runs in a venv of its own, with the
versions its code was written for (docs/lab/runbook.md, "The reference IDQL", gives the install commands):

    git --git-dir=<mirror> archive HEAD | tar -x -C /work/ref/idql
    /work/ref/idql-venv/bin/python lab/benchmarks/reference_idql.py --reference-dir /work/ref/idql \\
        --task bullet-hopper-medium-v0 --steps 50000 --eval-every 10000 --episodes 3 --final-episodes 20 \\
        --seed 0 --json OUT.json --state OUT.state

Its learner is built as its launcher (``launcher/examples/train_ddpm_iql_offline.py``) builds it for the MuJoCo
task of the same name: ``jaxrl5.agents.DDPMIQLLearner`` (the ``ddpm_iql_simple`` one that package exports) with the
launcher's ``rl_config`` (LN-ResNet actor, 3 blocks, dropout 0.1; T=5, vp; N=64 candidates; expectile 0.7 for
locomotion; actor EMA 0.001; actor LR cosine-decayed over 3e6 steps), batch 512, trained by its own ``update`` on
its own ``D4RLDataset`` after ``normalize_returns()`` and a 95% ``split`` (as ``train_diffusion_offline.py`` does).
The dataset is fed modzoo's transitions (built like ``d4rl.qlearning_dataset``): D4RLDataset's module imports d4rl
and mjrl, so while it is imported those two names are stand-ins whose ``qlearning_dataset`` returns modzoo's
arrays; the reference's own code then clips the actions, derives masks and episode ends, and normalizes.

Two deviations, both for reproducibility: the dataset's shuffle for the split is seeded with ``--seed`` (the
launcher leaves it unseeded), and each evaluation starts the agent's RNG from ``eval_seed(seed)``, as
``reference_score.py`` seeds torch there, without touching the training RNG (the launcher's ``evaluate`` also
leaves the training agent's RNG alone). Selection is its own ``eval_actions`` (64 candidates from the EMA actor,
argmax of the target critics' min Q), one state at a time (it asserts a single observation); the episodes are
modzoo's (``evaluate_policy``, the same env seeds as a modzoo run of this ``--seed``).

With ``--state`` the learner (flax params, optimizer states, EMA, RNG key), the sampler's key and the curve are
saved after every evaluation; rerun with the same arguments, it continues from there.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

# The launcher's settings for D4RL locomotion (train_ddpm_iql_offline.py's constant_parameters and its
# critic_hyperparam rule), which this script passes to DDPMIQLLearner.create unchanged.
LAUNCHER_RL_CONFIG = dict(actor_lr=3e-4, critic_lr=3e-4, value_lr=3e-4, T=5, N=64, M=0, actor_dropout_rate=0.1,
                          actor_num_blocks=3, decay_steps=int(3e6), actor_layer_norm=True, value_layer_norm=True,
                          actor_tau=0.001, beta_schedule="vp", critic_hyperparam=0.7)
LAUNCHER_BATCH_SIZE = 512
LAUNCHER_SPLIT = 0.95


def qlearning_arrays(ds: Any) -> dict[str, np.ndarray]:
    """modzoo's transitions as ``d4rl.qlearning_dataset`` returns them (the keys D4RLDataset reads)."""
    return {"observations": np.asarray(ds.observations, dtype=np.float32),
            "actions": np.asarray(ds.actions, dtype=np.float32),
            "next_observations": np.asarray(ds.next_observations, dtype=np.float32),
            "rewards": np.asarray(ds.rewards, dtype=np.float32).reshape(-1),
            "terminals": np.asarray(ds.terminals, dtype=np.float32).reshape(-1)}


def curve_point(step: int, ev: Any, episodes: int) -> dict:
    """One evaluation, in the fields the report reads from a reference JSON (as reference_score.py writes them)."""
    return {"step": int(step), "normalized_mean": float(ev.normalized_mean),
            "normalized_std": float(ev.normalized_std), "return_mean": float(ev.mean),
            "mean_length": float(np.mean(ev.lengths)), "episodes": int(episodes)}


def result_json(task: str, seed: int, steps: int, episodes: int, final_episodes: int, curve: list[dict],
                fingerprint: str, versions: dict[str, str], reference_commit: str | None) -> dict:
    """The JSON the report reads (the Diffusion-QL reference's shape, plus what this code ran)."""
    return {"task": task, "seed": seed, "steps": steps, "episodes": episodes, "final_episodes": final_episodes,
            "reference": "idql", "reference_commit": reference_commit,
            "config": {**LAUNCHER_RL_CONFIG, "batch_size": LAUNCHER_BATCH_SIZE, "split": LAUNCHER_SPLIT,
                       "normalize_returns": True},
            "curve": curve, **versions, "dataset": {"fingerprint": fingerprint}}


def import_reference(ref_dir: Path, arrays: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """``DDPMIQLLearner`` and ``D4RLDataset`` from the reference checkout, the latter reading ``arrays``.

    ``jaxrl5/data/d4rl_datasets.py`` imports d4rl and mjrl (MuJoCo datasets) at the top and calls
    ``d4rl.qlearning_dataset(env)`` in its constructor: both names are stand-in modules while it is imported, so
    the reference's own constructor builds its dataset from modzoo's transitions. No code of it is changed."""
    if not (ref_dir / "jaxrl5" / "agents" / "ddpm_iql_simple" / "ddpm_iql_learner.py").exists():
        raise SystemExit(f"{ref_dir} is not an IDQL checkout (no jaxrl5/agents/ddpm_iql_simple/ddpm_iql_learner.py)")
    sys.path.insert(0, str(ref_dir))
    agents = importlib.import_module("jaxrl5.agents")
    stand_ins = {name: types.ModuleType(name) for name in ("d4rl", "mjrl")}
    for m in stand_ins.values():
        m.qlearning_dataset = lambda env: {k: v.copy() for k, v in arrays.items()}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        d4rl_datasets = importlib.import_module("jaxrl5.data.d4rl_datasets")
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    return agents.DDPMIQLLearner, d4rl_datasets.D4RLDataset


def _commit(ref_dir: Path) -> str | None:
    head = ref_dir / "COMMIT"  # written by the runbook's unpack step (git archive drops .git)
    return head.read_text().strip() if head.exists() else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--task", default="bullet-hopper-medium-v0")
    ap.add_argument("--dataset", help="a D4RL-format file (default: the task's file in the D4RL cache dir)")
    ap.add_argument("--steps", type=int, default=50000)
    ap.add_argument("--eval-every", type=int, default=10000)
    ap.add_argument("--episodes", type=int, default=3, help="episodes per evaluation (idql-joint's eval_episodes)")
    ap.add_argument("--final-episodes", type=int, help="episodes of the last evaluation (idql-joint's "
                                                       "final_eval_episodes; default: --episodes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--state", type=Path, help="resume file, written after every evaluation (a long run killed "
                                               "midway continues from its last evaluation when rerun with it)")
    a = ap.parse_args(argv)
    final_episodes = a.final_episodes or a.episodes

    import flax
    import gym
    import jax  # the reference's venv; imported here so that the module's helpers import without JAX
    import optax

    import modzoo  # noqa: F401  (registers the envs)
    from modzoo.bullet.data import load_dataset
    from modzoo.run.evaluation import eval_seed, evaluate_policy

    ds_mz = load_dataset(a.dataset or a.task, task=a.task)
    Learner, D4RLDataset = import_reference(a.reference_dir.resolve(), qlearning_arrays(ds_mz))
    data = D4RLDataset(None)
    data.normalize_returns()  # the launcher does so for halfcheetah, walker2d and hopper
    data.seed(a.seed)
    train, _val = data.split(LAUNCHER_SPLIT)  # the launcher's validation half only logs losses
    obs_space = gym.spaces.Box(-np.inf, np.inf, (ds_mz.obs_dim,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (ds_mz.act_dim,), np.float32)
    agent = Learner.create(a.seed, obs_space, act_space, **LAUNCHER_RL_CONFIG)
    train.sample_jax(LAUNCHER_BATCH_SIZE)  # builds its jitted sampler and its key (PRNGKey(42): split leaves no seed)

    if a.json:  # before hours of training, not after them
        a.json.parent.mkdir(parents=True, exist_ok=True)
    curve, done, t0 = [], 0, time.time()
    if a.state and a.state.exists():
        agent, train.rng, curve, done = _load_state(a.state, agent)
        print(f"resumed at step {done} from {a.state}", flush=True)
    while done < a.steps:
        k = min(a.eval_every or a.steps, a.steps - done)
        t1 = time.time()
        for _ in range(k):
            agent, info = agent.update(train.sample_jax(LAUNCHER_BATCH_SIZE))
        jax.block_until_ready(agent.rng)
        train_s = time.time() - t1
        done += k
        n = final_episodes if done >= a.steps else a.episodes
        ev_agent = [agent.replace(rng=jax.random.PRNGKey(eval_seed(a.seed)))]

        def act(obs: np.ndarray) -> np.ndarray:
            out = []
            for o in obs:
                action, ev_agent[0] = ev_agent[0].eval_actions(o)
                out.append(action)
            return np.stack(out).reshape(len(obs), -1)

        ev = evaluate_policy(act, a.task, episodes=n, seed=eval_seed(a.seed))
        curve.append(curve_point(done, ev, n))
        print(f"reference IDQL, {a.task}, seed {a.seed}: step {done}: normalized {ev.normalized_mean:.1f} +- "
              f"{ev.normalized_std:.1f} over {n} episodes (return {ev.mean:.1f}, mean episode length "
              f"{np.mean(ev.lengths):.0f}); {k / train_s:.1f} steps/s, critic loss "
              f"{float(info['critic_loss']):.4f}, actor loss {float(info['actor_loss']):.4f}; "
              f"{time.time() - t0:.0f} s so far", flush=True)
        if a.state:
            _save_state(a.state, agent, train.rng, curve, done)
    versions = {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}
    out = result_json(a.task, a.seed, a.steps, a.episodes, final_episodes, curve, ds_mz.fingerprint, versions,
                      _commit(a.reference_dir))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return out


def _save_state(path: Path, agent: Any, sampler_rng: Any, curve: list[dict], done: int) -> None:
    """The learner's whole pytree (params, optimizer states, EMA actor, target critic, RNG key), the sampler's
    key, the curve and the step count, written atomically."""
    from flax import serialization

    blob = serialization.msgpack_serialize({"agent": serialization.to_state_dict(agent),
                                            "sampler_rng": np.asarray(sampler_rng), "done": done,
                                            "curve": json.dumps(curve)})
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)


def _load_state(path: Path, agent: Any) -> tuple[Any, Any, list[dict], int]:
    import jax.numpy as jnp
    from flax import serialization

    state = serialization.msgpack_restore(path.read_bytes())
    agent = serialization.from_state_dict(agent, state["agent"])
    return agent, jnp.asarray(state["sampler_rng"]), json.loads(state["curve"]), int(state["done"])


if __name__ == "__main__":
    main()
