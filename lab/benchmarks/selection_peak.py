"""How peaked a policy's candidate selection is, on the states its own evaluation visits.

A policy that acts by ranking N candidates with a critic (Diffusion-QL's softmax over Q at a temperature, IDQL's
argmax or expectile weights) is only as good as that ranking. This replays a run's final evaluation exactly
(the same episodes, seeds and sampling stream as ``modzoo.evaluate``, so its returns and falls match the run's
``result.json``), and on every state it acts in records how the ranking guidance weights the candidates:

- ``ess``: the effective number of candidates, 1 / sum p_i^2 (N for a uniform choice, 1 for a certain one);
- ``p_max``: the weight of the most likely candidate;
- ``logit spread``: temperature x (max Q - min Q) over the candidates (softmax only).

Other guidances (``--also``) score the same candidates on the same states without acting, so one table shows how
each critic would have ranked what the policy proposed. States are split by episode step (``--early``) and by
whether the episode fell (ended before the time limit).

    python lab/benchmarks/selection_peak.py RUN_DIR [--also OTHER_RUN_DIR/guidance.pt ...] [--early 100]

RUN_DIR is a finished run's directory (``policy.pt``, ``guidance.pt``, ``config.yaml``); figures from it are in
the findings of the experiment that ran it, with this command beside them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

import modzoo
from modzoo.blocks.selection import candidate_q, select_with_guidance, selection_probs
from modzoo.bullet.tasks import task_of
from modzoo.run.evaluation import eval_seed, evaluate_policy


def replay_check(run_dir: Path, normalized: np.ndarray) -> str:
    """Whether the replayed episodes are the run's own final evaluation, episode for episode: the figures
    above describe what that evaluation did only if they are."""
    res = run_dir / "result.json"
    if not res.exists():
        return "has no result.json to be checked against"
    theirs = np.asarray(json.loads(res.read_text())["eval"]["normalized"], dtype=float)
    if len(theirs) != len(normalized):
        return f"is not checked: the run's final evaluation has {len(theirs)} episodes, this one {len(normalized)}"
    same = np.allclose(theirs, normalized, rtol=0, atol=1e-6)
    return ("matches the run's final evaluation episode for episode" if same
            else "DIFFERS from the run's final evaluation: the table does not describe it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--also", type=Path, nargs="*", default=[], help="other guidance checkpoints to score with")
    ap.add_argument("--episodes", type=int, default=None, help="default: the run's final_eval_episodes")
    ap.add_argument("--early", type=int, default=100, help="steps counted as the start of an episode")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = OmegaConf.load(a.run_dir / "config.yaml")
    policy = modzoo.load_checkpoint(a.run_dir / "policy.pt", kind="policy")
    own = modzoo.load_checkpoint(a.run_dir / "guidance.pt", kind="guidance")
    others = [modzoo.load_checkpoint(p, kind="guidance") for p in a.also]
    names = [f"own ({own.algorithm})"] + [f"{p.parent.parent.name}/{p.parent.name} ({g.algorithm})"
                                          for p, g in zip(a.also, others)]
    rule, temp, tau = str(policy.cfg["selection"]), float(policy.cfg["temperature"]), float(policy.cfg["tau"])
    n = int(policy.cfg["candidates"])
    episodes = int(a.episodes or cfg.run.final_eval_episodes or cfg.run.eval_episodes)
    task, base = str(cfg.run.task), eval_seed(int(cfg.run.seed))
    rows: list[list[dict[str, np.ndarray]]] = []  # per act call (one env step of every live episode)

    @torch.inference_mode()
    def act(obs_np: np.ndarray) -> np.ndarray:
        # policy.act's own two calls (its candidates, then select_with_guidance drawing from the policy's
        # generator), so the replay acts exactly as the evaluation did; the weights below only read the candidates
        obs = torch.as_tensor(obs_np, dtype=torch.float32)
        cands = policy.candidates(obs, n)
        chosen = select_with_guidance(cands, obs, own, rule, temperature=temp, tau=tau, generator=policy.gen())
        step = []
        for g in [own, *others]:
            # a guidance without V cannot weigh by expectile: its view is its argmax, as the grid's swaps rank
            q, r = candidate_q(cands, obs, g), ("argmax" if rule == "expectile" and "v" not in g.provides else rule)
            p = selection_probs(r, q, g.v(obs) if r == "expectile" else None, temperature=temp, tau=tau)
            step.append({"ess": (1.0 / (p ** 2).sum(1)).numpy(), "p_max": p.max(1).values.numpy(),
                         "spread": (temp * (q.max(1).values - q.min(1).values)).numpy()})
        rows.append(step)
        return chosen.numpy()

    policy.use_generator(torch.Generator().manual_seed(base))
    ev = evaluate_policy(act, task, episodes=episodes, seed=base)
    limit = task_of(task).max_episode_steps
    fell = ev.lengths < limit
    print(f"{a.run_dir}: {task}, {episodes} episodes, normalized {ev.normalized_mean:.1f}, fell {fell.sum()}/"
          f"{episodes}; selection {rule}, temperature {temp:g}, {n} candidates (ranked by the own guidance)")
    print(f"the replay {replay_check(a.run_dir, ev.normalized)}")
    # at call k the live episodes are those longer than k, in episode order (the lockstep loop's batch)
    ep_of = [np.flatnonzero(ev.lengths > k) for k in range(len(rows))]
    print(f"{'ranked by':<42} {'states':>16} {'n':>6} {'ess median':>10} {'ess p10':>8} {'p_max median':>12} "
          f"{'logit spread median':>19}")
    for gi, name in enumerate(names):
        for label, keep in (("first %d steps, fell" % a.early, lambda k, e: k < a.early and fell[e]),
                            ("first %d steps, ran on" % a.early, lambda k, e: k < a.early and not fell[e]),
                            ("later steps", lambda k, e: k >= a.early)):
            sel = {m: np.concatenate([r[gi][m][[keep(k, e) for e in ep_of[k]]] for k, r in enumerate(rows)])
                   for m in ("ess", "p_max", "spread")}
            if not len(sel["ess"]):
                continue
            spread = f"{np.median(sel['spread']):.1f}" if rule == "softmax" else "n/a"
            print(f"{name:<42} {label:>22} {len(sel['ess']):>6} {np.median(sel['ess']):>10.2f} "
                  f"{np.percentile(sel['ess'], 10):>8.2f} {np.median(sel['p_max']):>12.3f} {spread:>19}")


if __name__ == "__main__":
    main()
