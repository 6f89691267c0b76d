"""modzoo as a library: train a guidance, train a policy on it, save, load, act on one observation, evaluate.

    python examples/quickstart.py                     # collects a 50k-transition hopper dataset first (offline)
    python examples/quickstart.py --dataset FILE      # or trains on a D4RL-format file you have

The defaults (2000 guidance steps, 4000 policy steps) take a few CPU-minutes; tests/test_quickstart.py runs this
file with a handful of steps.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym

import modzoo
from modzoo.bullet.collect import collect

TASK = "bullet-hopper-medium-v0"


def main(dataset: str, out: Path, guidance_steps: int, policy_steps: int, episodes: int) -> float:
    data = modzoo.load_dataset(dataset, task=TASK)  # transitions, the file's recipe, a fingerprint
    print(f"{data.name}: {len(data.observations)} transitions, fingerprint {data.fingerprint}")

    # 1. the IQL guidance alone (a guidance-first run without a policy), saved as guidance.pt
    critic_cfg = modzoo.run_config("idql", None, TASK, guidance_steps=guidance_steps, dataset=dataset,
                                   out=str(out / "iql"))
    modzoo.train(critic_cfg, data, progress=False)

    # 2. Diffusion-QL's actor trained on that frozen critic (one algorithm's guidance, another's policy)
    policy_cfg = modzoo.run_config("idql", "dql", TASK, schedule="pretrained", policy_steps=policy_steps,
                                   guidance_ckpt=str(out / "iql" / "guidance.pt"), eval_episodes=0,
                                   dataset=dataset, out=str(out / "dql"))
    result = modzoo.train(policy_cfg, data, progress=False)  # a RunResult: run_dir, guidance, policy, phases

    # 3. load both halves back and act on one observation as the env gives it (numpy in, numpy out)
    policy = modzoo.load_checkpoint(result.run_dir / "policy.pt")
    critic = modzoo.load_checkpoint(out / "iql" / "guidance.pt")
    env = gym.make(TASK)
    obs, _ = env.reset(seed=0)
    print("one action:", policy.predict(obs, critic))

    # 4. evaluate: episodes seeded apart from training, D4RL-normalized score
    ev = modzoo.evaluate(policy, critic, TASK, episodes=episodes)
    print(f"normalized score: {ev.normalized_mean:.1f} +- {ev.normalized_std:.1f} over {episodes} episodes")
    return ev.normalized_mean


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", help="a D4RL-format file (default: collect 50k transitions of the task)")
    ap.add_argument("--out", default="runs/quickstart")
    ap.add_argument("--guidance-steps", type=int, default=2000)
    ap.add_argument("--policy-steps", type=int, default=4000)
    ap.add_argument("--episodes", type=int, default=5)
    a = ap.parse_args()
    path = a.dataset or str(Path(a.out) / f"{TASK}.hdf5")
    if not a.dataset and not Path(path).exists():
        collect(TASK, transitions=50_000, seed=0, out=path, progress=False)
    main(path, Path(a.out), a.guidance_steps, a.policy_steps, a.episodes)
