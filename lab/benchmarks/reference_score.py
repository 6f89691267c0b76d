"""What the reference Diffusion-QL code scores on one of modzoo's datasets, at a budget modzoo's grid uses.

A correctness check, not a speed one: if modzoo's DQL scores far from the authors' own code on the same data at the
same number of steps, one of them is not Diffusion-QL. The reference (github.com/Zhendong-Wang/Diffusion-Policies-
for-Offline-RL) stays OUTSIDE this project, as for ``bench_reference.py``:

    git --git-dir=<mirror> archive HEAD | tar -x -C /work/ref/dql
    python lab/benchmarks/reference_score.py --reference-dir /work/ref/dql --task bullet-halfcheetah-medium-v0 \\
        --steps 5000 --eval-every 2500 --seed 0 [--state run.pt]

With ``--state`` a long run (50k steps is hours here) saves the agent, its optimizers and the global RNGs after
every evaluation and, rerun with the same arguments, continues from there to the same numbers as an
uninterrupted run (checked at 10 + 10 steps against 20).

Its agent is built as its main.py builds it for the MuJoCo task of the same name (lr 3e-4, eta 1, gn from its
table, which dql.yaml's task_overrides copy; vp, T=5, EMA 0.995 every 5 steps from step 1000, no LR decay unless
``--lr-decay``), trained by its own ``Diffusion_QL.train`` on its own ``Data_Sampler``, which is fed modzoo's
transitions (built like ``d4rl.qlearning_dataset``). Selection is its own ``sample_action`` (50 candidates, softmax
over the target critics' min Q), one state at a time; the episodes are modzoo's (``evaluate_policy``, the same env
seeds as a modzoo run of this ``--seed``), so the two codes are scored on the same starts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reference import import_reference  # noqa: E402

import modzoo  # noqa: E402,F401  (registers the envs; sets OMP_WAIT_POLICY before torch runs)
from modzoo.bullet.data import load_dataset  # noqa: E402
from modzoo.contract.registry import load_registry  # noqa: E402
from modzoo.run.config import half_config  # noqa: E402
from modzoo.run.evaluation import eval_seed, evaluate_policy  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--task", default="bullet-halfcheetah-medium-v0")
    ap.add_argument("--dataset", help="a D4RL-format file (default: the task's file in the D4RL cache dir)")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--eval-every", type=int, default=2500)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr-decay", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--state", type=Path, help="resume file, written after every evaluation (a long run killed "
                                               "midway continues from its last evaluation when rerun with it)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    Diffusion_QL, Data_Sampler = import_reference(a.reference_dir.resolve())
    ds = load_dataset(a.dataset or a.task, task=a.task)
    sampler = Data_Sampler({"observations": ds.observations, "actions": ds.actions,
                            "next_observations": ds.next_observations, "rewards": ds.rewards,
                            "terminals": ds.terminals}, "cpu", reward_tune="no")
    gn = float(half_config(load_registry().policy("dql").default_config(), a.task)["grad_norm"])
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    agent = Diffusion_QL(state_dim=ds.obs_dim, action_dim=ds.act_dim, max_action=1.0, device="cpu", discount=0.99,
                         tau=0.005, max_q_backup=False, beta_schedule="vp", n_timesteps=5, eta=1.0, lr=3e-4,
                         lr_decay=a.lr_decay, lr_maxt=2000, grad_norm=gn)

    def act(obs: np.ndarray) -> np.ndarray:
        return np.stack([agent.sample_action(o) for o in obs])

    if a.json:  # before hours of training, not after them
        a.json.parent.mkdir(parents=True, exist_ok=True)
    curve, done, t0 = [], 0, time.time()
    if a.state and a.state.exists():
        curve, done = _load_state(a.state, agent)
        print(f"resumed at step {done} from {a.state}", flush=True)
    while done < a.steps:
        k = min(a.eval_every or a.steps, a.steps - done)
        agent.train(sampler, iterations=k, batch_size=256)
        done += k
        torch.manual_seed(eval_seed(a.seed))  # its sampling draws from torch's stream
        ev = evaluate_policy(act, a.task, episodes=a.episodes, seed=eval_seed(a.seed))
        curve.append({"step": done, "normalized_mean": ev.normalized_mean, "normalized_std": ev.normalized_std,
                      "return_mean": ev.mean, "mean_length": float(np.mean(ev.lengths))})
        print(f"reference Diffusion-QL, {a.task}, seed {a.seed}, gn {gn}: step {done}: normalized "
              f"{ev.normalized_mean:.1f} +- {ev.normalized_std:.1f} (return {ev.mean:.1f}, mean episode length "
              f"{np.mean(ev.lengths):.0f}), {time.time() - t0:.0f} s so far", flush=True)
        if a.state:
            _save_state(a.state, agent, curve, done)
    out = {"task": a.task, "seed": a.seed, "steps": a.steps, "episodes": a.episodes, "grad_norm": gn,
           "lr_decay": a.lr_decay,
           "curve": curve, "torch": torch.__version__,
           "dataset": {"fingerprint": ds.fingerprint}}  # as a grid run's result.json: which data it was
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return out


_PARTS = ("actor", "ema_model", "critic", "critic_target", "actor_optimizer", "critic_optimizer")


def _save_state(path: Path, agent: object, curve: list[dict], done: int) -> None:
    """Everything the reference agent's training continues from, and the global RNGs its sampler draws from."""
    state = {k: getattr(agent, k).state_dict() for k in _PARTS}
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state.update(step=agent.step, done=done, curve=curve, torch_rng=torch.get_rng_state(),
                 numpy_rng=[kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)])
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _load_state(path: Path, agent: object) -> tuple[list[dict], int]:
    state = torch.load(path, weights_only=True)
    for k in _PARTS:
        getattr(agent, k).load_state_dict(state[k])
    agent.step = state["step"]
    torch.set_rng_state(state["torch_rng"])
    kind, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    return state["curve"], int(state["done"])


if __name__ == "__main__":
    main()
