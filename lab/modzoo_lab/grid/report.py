"""The experiment report (``docs/results.md``), generated from committed run summaries, never typed.

Two spreads are reported and named as such:
- **across seeds**: one number per seed (the mean normalized score of that seed's final evaluation episodes);
- **across episodes**: every final evaluation episode of every seed pooled (the GFDT authors' IQR is presumably
  over episodes of one evaluation; ours pools seeds too, and says so).

A pooled spread mostly counts episodes that fall, so wherever one is printed (a cell's IQR, a swap's IQR cut) its
between-seed counterpart stands beside it: the per-seed means' IQR, min-max and bootstrap interval
(:func:`modzoo_lab.grid.aggregate.between_seeds`).
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from modzoo.bullet.collect import EXPERT_SIGMA, MEDIUM_SIGMA, REPLAY_SIGMA_START
from modzoo.bullet.experts import PYBULLET_EXPERTS
from modzoo.bullet.tasks import Task, task_of
from modzoo.errors import ModzooError

from .aggregate import REPS, between_seeds, iqm_difference, iqm_interval, probability_of_improvement
from .check import REFERENCE_ARM
from .efficiency import FRACTION, MIN_FINAL, normalized_auc, steps_to_fraction
from .plan import config_drift, load_experiment, plan


@dataclass
class RunSummary:
    task: str
    arm: str
    seed: int
    result: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)
    swaps: dict[str, Any] = field(default_factory=dict)

    @property
    def final_episodes(self) -> np.ndarray:
        return np.asarray(self.result.get("eval", {}).get("normalized", []), dtype=float)

    @property
    def final_score(self) -> float:
        return float(self.result["normalized_score"])


def _summary_json(path: Path) -> dict[str, Any]:
    """A summary file's JSON object; a damaged one (a copy cut short, a hand edit) is named in one line rather
    than failing deep inside a table."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModzooError(f"{path}: not valid JSON ({e}); restore it from git or from the run dir it came from") from e
    if not isinstance(data, dict):
        raise ModzooError(f"{path}: a run summary is a JSON object, this holds a {type(data).__name__}; restore it "
                          "from git or from the run dir it came from")
    return data


def load_summaries(root: str | Path) -> list[RunSummary]:
    """Read ``<root>/<task>/<arm>/seed<k>/{result.json,curve.csv,swaps.json}``."""
    out = []
    for res in sorted(Path(root).glob("*/*/seed*/result.json")):
        d = res.parent
        curve = []
        if (d / "curve.csv").exists():
            with (d / "curve.csv").open() as f:
                curve = [(int(r["step"]), float(r["normalized_mean"])) for r in csv.DictReader(f)]
        swaps = _summary_json(d / "swaps.json") if (d / "swaps.json").exists() else {}
        bad = [k for k, v in swaps.items() if not isinstance(v, dict)]
        if bad:
            raise ModzooError(f"{d / 'swaps.json'}: swap {bad[0]!r} is not an evaluation record; restore the file "
                              "from git or from the run dir it came from")
        result = _summary_json(res)
        if "normalized_score" not in result:
            continue
        out.append(RunSummary(d.parent.parent.name, d.parent.name, int(d.name[4:]), result, curve, swaps))
    return out


def spread(x: np.ndarray | list[float]) -> dict[str, float]:
    """mean, std (population), median and IQR (75th - 25th percentile, numpy's linear interpolation)."""
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "median": float("nan"), "iqr": float("nan")}
    q75, q25 = np.percentile(a, [75, 25])
    if a.size < 2:  # one value has no spread to measure: say n/a rather than print a measured-looking 0.0
        return {"n": 1, "mean": float(a[0]), "std": float("nan"), "median": float(a[0]), "iqr": float("nan")}
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "median": float(np.median(a)),
            "iqr": float(q75 - q25)}


def _peak_covers_phase(ph: dict[str, Any], curve: list[tuple[int, float]]) -> bool:
    """Whether a phase's recorded peak RSS stands for the whole phase.

    A phase resumed after an interruption was metered by its last process only. That process still ran every
    kind of work the phase does, so its peak is the phase's, when the phase has no interim evaluations (a
    guidance phase) or one of them fell after the restart (the curve has a step past ``resumed_at``). A process
    that only trained the last steps missed the evaluations' envs, and its peak would understate the phase.
    """
    first = ph.get("resumed_at")
    if not first or ph.get("evals") == 0:
        return True
    return any(first < step < ph.get("steps", 0) for step, _ in curve)


def arm_stats(runs: list[RunSummary]) -> dict[str, Any]:
    seeds = spread([r.final_score for r in runs])
    episodes = spread(np.concatenate([r.final_episodes for r in runs]) if runs else [])
    phases: dict[str, dict[str, float]] = {}
    for r in runs:
        for ph in r.result.get("phases", []):
            p = phases.setdefault(ph["phase"], {"wall_s": [], "rss_peak_mb": [], "steps": [], "evals": [],
                                                 "eval_wall_s": [], "cuda_peak_mb": [], "cpu_s": []})
            p["wall_s"].append(ph["wall_s"])
            # summaries written before 2026-11-27 have no CPU time: nan, so a cell's mean is n/a unless every
            # run has it (a CPU mean over some runs would not compare with the wall mean over all)
            p["cpu_s"].append(ph.get("cpu_s", float("nan")))
            if _peak_covers_phase(ph, r.curve):
                p["rss_peak_mb"].append(ph["rss_peak_mb"])
            p["steps"].append(ph.get("steps", ph.get("episodes", 0)))
            # summaries written before 2026-11-25 timed interim evaluations inside wall_s: n/a, not 0
            p["evals"].append(ph.get("evals", float("nan")))
            p["eval_wall_s"].append(ph.get("eval_wall_s", float("nan")))
            if "cuda_peak_mb" in ph:
                p["cuda_peak_mb"].append(ph["cuda_peak_mb"])
    phase_means = {k: {"runs": len(d["wall_s"]),
                       **{m: float(np.mean(v)) if v else float("nan") for m, v in d.items()}}
                   for k, d in phases.items()}
    # each run's training time (its phases but the final evaluation), kept per run for a median: on a shared
    # machine one run slowed by other work moves a mean of a few seeds, not their median
    train = [sum(ph["wall_s"] for ph in r.result.get("phases", []) if ph["phase"] != "eval") for r in runs]
    return {"seeds": seeds, "episodes": episodes, "phases": phase_means, "train_wall_s": train,
            "guidance_wall_s": [ph["wall_s"] for r in runs for ph in r.result.get("phases", [])
                                if ph["phase"] == "guidance"],
            "parameters": runs[0].result.get("parameters", {}) if runs else {}}


def _short(task: str) -> str:
    """A task's name in a table heading: ``bullet-hopper-medium-v0`` -> ``hopper-medium``."""
    return task.removeprefix("bullet-").removesuffix("-v0")


def _fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def _nanmax(xs: list[float]) -> float:
    """The largest of the values that are not nan (nan if none is): a phase with no trustworthy peak is skipped."""
    return max((x for x in xs if x == x), default=float("nan"))


def _group(runs: list[RunSummary]) -> dict[str, dict[str, list[RunSummary]]]:
    g: dict[str, dict[str, list[RunSummary]]] = {}
    for r in runs:
        g.setdefault(r.task, {}).setdefault(r.arm, []).append(r)
    return g


def _plots(task: str, arms: dict[str, list[RunSummary]], img_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img_dir.mkdir(parents=True, exist_ok=True)
    names = []
    curves = {arm: sorted({s for r in runs for s, _ in r.curve}) for arm, runs in sorted(arms.items())}
    if any(curves.values()):  # runs without interim evaluations have no curve to draw
        fig, ax = plt.subplots(figsize=(7, 4))
        for arm, steps in curves.items():
            if not steps:
                continue
            mat = np.array([[dict(r.curve).get(s, np.nan) for s in steps] for r in arms[arm]], dtype=float)
            ax.plot(steps, np.nanmean(mat, 0), label=arm)
            ax.fill_between(steps, np.nanmin(mat, 0), np.nanmax(mat, 0), alpha=0.15)
        ax.set_xlabel("policy steps")
        ax.set_ylabel("D4RL-normalized score")
        ax.set_title(f"{task}: mean over seeds, band = min..max across seeds")
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"curves_{task}.png"
        fig.savefig(img_dir / name, dpi=90)
        plt.close(fig)
        names.append(name)
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = sorted(arms)
    ax.boxplot([[r.final_score for r in arms[a]] for a in labels])
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("final normalized score (one point per seed)")
    ax.set_title(task)
    fig.tight_layout()
    name = f"box_{task}.png"
    fig.savefig(img_dir / name, dpi=90)
    plt.close(fig)
    names.append(name)
    return names


def render(exp: DictConfig, runs: list[RunSummary], img_dir: Path, img_rel: str,
           grid_seconds: float | None = None) -> str:
    cmd = f"modzoo experiment {exp.name}"
    rep = f"modzoo experiment {exp.name} --report-only"
    lines = [f"# Results: experiment `{exp.name}`", "",
             f"Generated by `{rep}` from the run summaries in `{exp.summaries}` (written by `{cmd}`). "
             "Do not edit by hand: edit the findings file and regenerate.", ""]
    if "description" in exp and exp.description:
        lines += [str(exp.description).strip(), ""]
    lines += _datasets_header(exp)
    b = exp.budget
    lines += ["## Budget", "",
              f"- per run: guidance {b.get('guidance_steps')} steps (guidance-first arms), "
              f"policy {b.get('policy_steps')} steps, evaluation every {b.get('eval_every')} policy steps "
              f"with {b.get('eval_episodes')} episodes "
              + (f"({b.get('final_eval_episodes')} at the end) " if b.get("final_eval_episodes") is not None else "")
              + "in a vector of envs; the GFDT authors train 200k steps per run and evaluate 50 episodes "
              "(`lab/experiments/gfdt-paper.yaml` holds that budget).",
              f"- tasks: {', '.join(exp.tasks)}; seeds: {', '.join(map(str, exp.seeds))}; arms: "
              f"{', '.join(exp.arms.keys())}."]
    special = _arm_settings(exp)
    if special:
        lines.append("- arms that depart from the budget or the plugin defaults: " + "; ".join(special) + ".")
    lines += _mixed_arm_labels(exp)
    cost = _grid_cost(runs)
    if cost:
        lines.append(cost)
    if grid_seconds is not None:
        lines.append(f"- the last `{cmd}` call took {grid_seconds:.0f} s of wall time (finished runs are skipped, "
                     "so a resumed grid reports only its own part).")
    lines.append("")
    groups = _group(runs)
    if not groups:
        lines += ["No finished runs yet.", ""]
    lines += _overview(groups, rep)
    beside = _beside_grid(exp)  # read once: the pairs, the cost ratios and the beside section all use it
    paired = _with_beside_arms(exp, groups, beside)
    lines += _aggregate(exp, paired, rep)
    lines += _efficiency(exp, paired, rep, img_dir, img_rel)
    for task, arms in sorted(groups.items()):
        limit = time_limit(task)
        limit_words = f"{limit}-step time limit" if limit else "time limit (n/a: none known for this task)"
        lines += [f"## {task}", "", f"Final D4RL-normalized scores (×100). Command: `{cmd}`. *Across seeds*: "
                  "one number per seed (the mean over that seed's final evaluation episodes), spread over the "
                  "`seeds` of the cell; *across episodes*: every final episode of every seed pooled (each seed "
                  "evaluates from its own start states). std is the population std; IQR is the 75th minus the "
                  "25th percentile (numpy's linear interpolation); n/a where one value has no spread. *fell*: "
                  f"of the pooled final episodes, those that ended before the {limit_words} (the env "
                  "terminated them: in locomotion, the robot fell; halfcheetah never terminates). The pooled "
                  "IQR mostly measures how often episodes fall; the between-seed spread is the *across seeds* "
                  "block: IQR, min-max of the per-seed means, and the 95% interval of their mean from a "
                  f"bootstrap over seeds ({REPS} resamples, fixed seed; {_FEW_SEEDS}).", "",
                  "| arm | guidance | policy | schedule | seeds | across seeds: mean | std | median | IQR | "
                  "min-max | mean 95% interval | "
                  "episodes | across episodes: mean | std | median | IQR | fell |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        # the beside grid's joint arms too (``gfdt_pairs`` GRID/ARM), for the cost ratios; their rows stay there
        stats = {a: arm_stats(rs) for a, rs in paired[task].items()}
        for a in sorted(arms):
            s, e, r0 = stats[a]["seeds"], stats[a]["episodes"], arms[a][0].result
            b = between_seeds([r.final_score for r in arms[a]])
            lines.append(f"| {a} | {r0.get('guidance')} | {r0.get('policy')} | {r0.get('schedule')} | {s['n']} | "
                         f"{_fmt(s['mean'])} | {_fmt(s['std'])} | {_fmt(s['median'])} | {_fmt(s['iqr'])} | "
                         f"{_range(b['min'], b['max'])} | {_range(b['lo'], b['hi'], ' to ')} | {e['n']} | "
                         f"{_fmt(e['mean'])} | {_fmt(e['std'])} | {_fmt(e['median'])} | {_fmt(e['iqr'])} | "
                         f"{fell([r.result.get('eval', {}) for r in arms[a]], limit)} |")
        lines += _data_line(arms)
        lines += ["", "Wall time and peak memory per phase, mean over the runs counted in `runs` (each run in a "
                  "process of its own; RSS includes the dataset and Python, sampled every 50 ms; CUDA: "
                  "`torch.cuda.max_memory_allocated`, GPU runs only). `wall s` is the phase's updates alone: "
                  "the evaluations every `eval_every` steps inside it are timed apart (`interim evals`, their "
                  "`eval s`), and the final evaluation is the `eval` phase; `n/a` there marks summaries written "
                  "before 2026-11-25, whose `wall s` still includes those evaluations. `peak RSS MB` leaves out "
                  "a phase resumed after an interruption unless its last process also ran an interim evaluation "
                  "(or the phase has none): a process that only trained the last steps never built the "
                  "evaluation's envs. "
                  "`CPU s` is the process's CPU time (all its threads) for what `wall s` times, which other "
                  "work on a shared machine stretches far less than wall time; n/a for summaries written before "
                  "2026-11-27. Command: "
                  f"`{rep}`.", "",
                  "| arm | phase | runs | steps | wall s | ms per step | interim evals | eval s | CPU s | "
                  "peak RSS MB | peak CUDA MB | parameters (guidance / policy) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for a in sorted(arms):
            p = stats[a]["parameters"]
            for ph, m in stats[a]["phases"].items():
                per = 1e3 * m["wall_s"] / m["steps"] if ph != "eval" and m["steps"] else float("nan")
                evals = "n/a" if m["evals"] != m["evals"] else f"{m['evals']:.0f}"
                lines.append(f"| {a} | {ph} | {m['runs']} | {m['steps']:.0f} | {m['wall_s']:.1f} | {_fmt(per)} | "
                             f"{evals} | {_fmt(m['eval_wall_s'])} | {_fmt(m['cpu_s'])} | "
                             f"{_fmt(m['rss_peak_mb'], 0)} | "
                             f"{_fmt(m['cuda_peak_mb'])} | {p.get('guidance', 'n/a')} / {p.get('policy', 'n/a')} |")
        ratios = _gfdt_ratios(exp, stats)
        if ratios:
            lines += ["", "GFDT vs joint (training wall time of the policy's run, guidance phase included, "
                      "interim evaluations left out, as the ratio of each arm's mean over its runs and of its "
                      "median run, which one run slowed by other work on the machine does not move; the same "
                      "ratio of mean CPU time, n/a where a summary has none; and the largest peak RSS of any "
                      "training phase). `n/a` where a reused guidance's run has not finished"
                      + ("; a joint arm written GRID/ARM ran in that grid, on its machines and beside its load, "
                         "so of its ratios the CPU time's compares best" if any("/" in j for _, j, *_ in ratios)
                         else "") + ":", "",
                      "| GFDT arm | joint arm | runs (GFDT / joint) | time ratio (means) | time ratio (medians) | "
                      "CPU time ratio (means) | peak RSS ratio |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {g} | {j} | {n} | {_fmt(t, 2)} | {_fmt(tm, 2)} | {_fmt(c, 2)} | {_fmt(m, 2)} |"
                      for g, j, n, t, tm, c, m in ratios]
        sw = _swap_rows(arms, limit)
        if sw:
            lines += ["", "Inference-time swap: the final policies ranked by the same arm's guidance from another "
                      "seed, or by another algorithm's guidance, beside the same policies ranked by their own "
                      f"guidance on the same seeds (IQR across seeds and across pooled episodes; *fell* as above). "
                      f"Command: `{rep}`.",
                      "", "| policy arm | ranked by | seeds | mean | std | median | IQR seeds | IQR episodes | fell | "
                      "own guidance: mean | IQR seeds | IQR episodes | fell |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            lines += sw
            lines += _iqr_cuts(arms, rep)
        for name in _plots(task, arms, img_dir):
            lines += ["", f"![{name}]({img_rel}/{name})", "", f"(`{rep}` regenerates this plot.)"]
        lines.append("")
    lines += _reference_check(exp, runs)
    lines += _beside(exp, runs, beside)
    findings = Path(str(exp.get("findings", "") or ""))
    lines += ["## Findings", ""]
    if findings.is_file():
        lines += [findings.read_text().strip(), ""]
    else:
        lines += ["(No findings written yet: read the tables above, then write them in "
                  f"`{exp.get('findings', 'lab/experiments/<name>.findings.md')}`.)", ""]
    return "\n".join(lines)


def _range(lo: float, hi: float, sep: str | None = None, digits: int = 1) -> str:
    """``[lo, hi]`` (a min-max; brackets, since a dash between negative scores misreads), ``lo{sep}hi`` with a
    separator (an interval), or n/a where one value has no spread."""
    if lo != lo or hi != hi:
        return "n/a"
    return f"[{_fmt(lo, digits)}, {_fmt(hi, digits)}]" if sep is None else f"{_fmt(lo, digits)}{sep}{_fmt(hi, digits)}"


#: What the between-seed bootstrap interval can say with few seeds, said wherever it is printed.
_FEW_SEEDS = ("with n seeds each end of the min-max is a whole resample with chance 1/n^n, above 2.5% for n <= 3, "
              "so with 3 seeds the interval is the min-max itself: it shows how few seeds there are, not a "
              "narrower range")


#: How each guidance plugin's critic is named in prose (the mixed arms' labels); another plugin is named as is.
_CRITIC_WORDS = {"idql": "IQL", "dql": "Diffusion-QL", "iql": "IQL"}
_POLICY_WORDS = {"idql": "IDQL", "dql": "Diffusion-QL"}


def _recipe_words(task: Task) -> str:
    """How ``modzoo data collect`` makes ``task``'s file, in words, from the collector's own constants (so the
    header follows the code rather than a copy of it)."""
    robot, level = task.robot, task.level
    pyb = robot in PYBULLET_EXPERTS
    expert = "pybullet's bundled 2017 expert" if pyb else "a SAC actor trained here"
    medium = expert if pyb else "an earlier snapshot of the SAC run trained here"
    if level == "random":
        return "uniform random actions"
    if level == "expert":
        return f"{expert} + noise sigma {EXPERT_SIGMA}"
    if level == "medium":
        return f"{medium} + noise sigma {MEDIUM_SIGMA[robot]}"
    if level == "medium-replay":
        return (f"{medium} with noise falling from sigma {REPLAY_SIGMA_START[robot]} to {MEDIUM_SIGMA[robot]} "
                "across the file" + ("" if pyb else ", or SAC's own replay buffer (`--from-run`)"))
    return "the medium file followed by the expert file"


def _datasets_header(exp: DictConfig) -> list[str]:
    """The paragraph that says what the data is before any score is read: made here in PyBullet, by which
    recipe, and not comparable with published D4RL MuJoCo tables. A reader who knows D4RL's hopper-medium
    (a SAC policy stopped at a third of expert) would otherwise read these scores against it."""
    recipes = []
    for name in exp.tasks:
        try:
            t = task_of(str(name))
        except ModzooError:
            continue
        if isinstance(t, Task):
            recipes.append(f"`{t.name}`: {_recipe_words(t)}")
    if not recipes:
        return []
    link = os.path.relpath("docs/datasets.md", Path(str(exp.get("report", "docs/x.md"))).parent)
    return ["**The data is made here, in PyBullet, not D4RL's.** D4RL's Bullet files cannot be downloaded here, so "
            "`modzoo data collect` simulates each dataset with D4RL's file layout and scores it with D4RL's "
            "reference returns: a behaviour policy run with Gaussian action noise (clipped to [-1, 1]). This "
            f"grid's: {'; '.join(recipes)}. D4RL's MuJoCo datasets come from SAC policies (medium: one stopped at "
            "about a third of the expert's return), and Bullet's robots are not MuJoCo's, so **the normalized "
            "scores below do not compare with published D4RL MuJoCo tables**; compare arms within this report. "
            f"Each task's behaviour policy, its own score, the noise, the size and the data's own score, beside "
            f"D4RL's recipe for the same name: [docs/datasets.md]({link}).", ""]


def _mixed_arm_labels(exp: DictConfig) -> list[str]:
    """What an arm that trains one algorithm's policy on another's frozen guidance (``guidance_from``) is, and
    what it is not: the GFDT authors' code uses another algorithm's guidance only to rank candidates at
    inference, which here is the ``other_algorithm`` swap of a policy trained by its own algorithm."""
    swaps = (exp.get("swaps") or {}).get("other_algorithm") or {}
    own = [f"`{p}` ranked by `{g}`" for p, g in swaps.items()
           if p in exp.arms and exp.arms[p].get("guidance") == exp.arms[p].get("policy")]
    out = []
    for name, arm in exp.arms.items():
        g, pol = str(arm.get("guidance")), str(arm.get("policy"))
        if not arm.get("guidance_from") or g == pol:
            continue
        analogue = (f"; the analogue of the authors' protocol is the `other_algorithm` swap ({', '.join(own)})"
                    if own else "")
        out.append(f"- `{name}` is a frozen {_CRITIC_WORDS.get(g, g)} critic (`{arm.guidance_from}`'s, same task "
                   f"and seed) guiding {_POLICY_WORDS.get(pol, pol)}'s training and ranking: modzoo's modular "
                   "claim, that one algorithm's trained guidance can train another's actor. It is not the GFDT "
                   "paper's cross-algorithm protocol: the authors' code uses another algorithm's guidance only to "
                   f"rank candidates at inference{analogue}.")
    return out


def _per_seed(values: list[float]) -> str:
    """A per-seed list of values, in seed order, each to one decimal (n/a for a missing one)."""
    return ", ".join(_fmt(v, 0) if abs(v) >= 1000 else _fmt(v) for v in values) if values else "n/a"


def _beside_grid(exp: DictConfig) -> tuple[DictConfig, list[RunSummary]] | None:
    """The ``beside`` experiment and its finished runs, its stale ones left out as its own report leaves them out
    (None when this grid names no ``beside``)."""
    name = (exp.get("beside") or {}).get("experiment")
    if not name:
        return None
    other = load_experiment(str(name))
    return other, split_stale(other, load_summaries(other.summaries))[0]


def _with_beside_arms(exp: DictConfig, groups: dict[str, dict[str, list[RunSummary]]],
                      beside: tuple[DictConfig, list[RunSummary]] | None
                      ) -> dict[str, dict[str, list[RunSummary]]]:
    """``groups`` plus, for each ``gfdt_pairs`` joint arm written ``OTHER/ARM``, the ``beside`` grid's runs of that
    arm under that name: a grid that adds one GFDT arm (``dql-gf-sarsa``) is compared with the joint arm another
    grid already ran on the same tasks and seeds, not with a copy trained again."""
    named = {str(j) for j in (exp.get("gfdt_pairs", {}) or {}).values() if "/" in str(j)}
    if not named or beside is None:
        return groups
    other, theirs = beside
    out = {task: dict(arms) for task, arms in groups.items()}
    for r in theirs:
        label = f"{other.name}/{r.arm}"
        if label in named and r.task in out:
            out[r.task].setdefault(label, []).append(r)
    return out


def _on_steps(curve: list[tuple[int, float]], steps: set[int]) -> list[tuple[int, float]]:
    return [(s, v) for s, v in curve if s in steps]


def _efficiency(exp: DictConfig, groups: dict[str, dict[str, list[RunSummary]]], rep: str, img_dir: Path,
                img_rel: str) -> list[str]:
    """Sample efficiency of each ``gfdt_pairs`` pair, per task, from the runs' curves
    (:mod:`modzoo_lab.grid.efficiency`): the paper claims guidance-first training is more sample efficient, which
    a final score cannot show. Per seed, then the mean with its between-seed spread, and a figure.

    Both arms of a pair are read at the steps every run of the pair evaluated, so that a pair across two grids
    with different evaluation grids (every 5k against every 10k) compares like with like; within one grid this
    keeps every step."""
    pairs = [(str(g), str(j)) for g, j in (exp.get("gfdt_pairs", {}) or {}).items()]
    rows, diffs, fig = [], [], {}
    for task, arms in sorted(groups.items()):
        for g, j in pairs:
            if not arms.get(g) or not arms.get(j) or not any(r.curve for r in arms[g] + arms[j]):
                continue
            common = set.intersection(*({s for s, _ in r.curve} for r in arms[g] + arms[j] if r.curve))
            per: dict[str, dict[int, tuple[float, float]]] = {}
            for a in (g, j):
                per[a] = {r.seed: (steps_to_fraction(_on_steps(r.curve, common), r.final_score),
                                   normalized_auc(_on_steps(r.curve, common)))
                          for r in sorted(arms[a], key=lambda r: r.seed) if r.curve}
                st = [v[0] for v in per[a].values()]
                auc = [v[1] for v in per[a].values()]
                bs, ba = between_seeds([x for x in st if x == x]), between_seeds(auc)
                missing = sum(x != x for x in st)
                rows.append(f"| {task} | {a} | {', '.join(map(str, per[a]))} | {_per_seed(st)} | "
                            f"{_fmt(bs['mean'], 0)}{f' ({missing} n/a)' if missing else ''} | "
                            f"{_range(bs['min'], bs['max'], digits=0)} | {_per_seed(auc)} | {_fmt(ba['mean'])} | "
                            f"{_fmt(ba['iqr'])} | {_range(ba['min'], ba['max'])} | "
                            f"{_range(ba['lo'], ba['hi'], ' to ')} |")
                fig.setdefault(task, {})[a] = (st, auc)
            seeds = sorted(set(per[g]) & set(per[j]))
            d_auc = [per[g][s][1] - per[j][s][1] for s in seeds]
            d_st = [per[g][s][0] - per[j][s][0] for s in seeds]
            b = between_seeds(d_auc)
            known = [x for x in d_st if x == x]  # a seed without a target on either side has no difference
            d_mean = _fmt(float(np.mean(known)), 0) if known else "n/a"
            diffs.append(f"| {task} | {g} - {j} | {len(seeds)} | {d_mean} | "
                         f"{sum(x < 0 for x in d_st)} / {sum(x > 0 for x in d_st)} | {_per_seed(d_auc)} | "
                         f"{_fmt(b['mean'])} | {_range(b['lo'], b['hi'], ' to ')} | {sum(x > 0 for x in d_auc)} |")
    if not rows:
        return []
    b = exp.budget
    cross = sorted({j for _, j in pairs if "/" in j})
    across = "" if not cross else (
        f" A joint arm written `GRID/ARM` ({', '.join(f'`{j}`' for j in cross)}) is that grid's runs of the arm on "
        "the same task (the differences pair the same seeds); each pair is read at the policy steps every run of "
        "both arms evaluated, so that two evaluation grids compare at the same points.")
    out = ["## Sample efficiency", "",
           f"From each run's curve (`curve.csv`: an evaluation every {b.get('eval_every')} policy steps, the last "
           "one the final evaluation): *steps to 90%*, the first evaluated step at which the run scores at least "
           f"{FRACTION:.0%} of its own final score (its resolution is the evaluation grid; n/a where the final score "
           f"is below {MIN_FINAL:g}, near a random policy's 0: a run that did not learn); *AUC*, the area under "
           "the curve by the trapezoid rule from the first evaluation to "
           "the last, divided by the steps between them: the mean normalized score over training. Per seed (in "
           "the order of `seeds`), then the mean over seeds with the between-seed spread: IQR, min-max and the 95% "
           f"interval of the mean from a bootstrap over seeds ({REPS} resamples, fixed seed; {_FEW_SEEDS}). "
           "Interim evaluations "
           "are as many episodes as the budget and arm settings above give (fewer than the final one), so a curve "
           f"point is noisier than the final score.{across} Command: `{rep}` "
           "(`modzoo_lab.grid.efficiency`).", "",
           "| task | arm | seeds | steps to 90% per seed | mean | min-max | AUC per seed | AUC mean | IQR | "
           "min-max | mean 95% interval |", "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
           "GFDT against joint, seed by seed (same seed): the mean difference in steps to 90% (negative: GFDT "
           "gets there sooner) and the seeds where GFDT is sooner / later; the AUC difference per seed, its mean "
           "with the bootstrap interval over seeds, and the seeds where GFDT's AUC is higher. The x-axis is policy "
           "steps: a GFDT arm's guidance was trained to the end before its policy's first step, so every point of "
           "its curve is ranked (and, where the policy trains on the guidance, trained) by a finished guidance, "
           "while a joint arm's guidance has had only as many steps as its policy. Counted in all steps, "
           "guidance's included, the GFDT arm starts its curve that many steps later.", "",
           "| task | GFDT - joint | seeds | steps to 90%: mean difference | sooner / later | AUC difference per "
           "seed | mean | 95% interval | seeds GFDT higher |", "|---|---|---|---|---|---|---|---|---|", *diffs, ""]
    name = _efficiency_plot(fig, img_dir)
    return out + [f"![{name}]({img_rel}/{name})", "", f"(`{rep}` regenerates this plot.)", ""]


def _efficiency_plot(fig_data: dict[str, dict[str, tuple[list[float], list[float]]]], img_dir: Path) -> str:
    """Steps to 90% and AUC per arm and task, one dot per seed and a bar at the mean."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img_dir.mkdir(parents=True, exist_ok=True)
    tasks = sorted(fig_data)
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.6 * len(tasks), 6), squeeze=False)
    for col, task in enumerate(tasks):
        arms = list(fig_data[task])
        for row, (idx, label) in enumerate(((0, "steps to 90% of final"), (1, "AUC / steps (mean score)"))):
            ax = axes[row][col]
            for k, a in enumerate(arms):
                vals = np.asarray(fig_data[task][a][idx], dtype=float)
                ok = vals[vals == vals]
                ax.bar(k, ok.mean() if ok.size else 0.0, color="C0" if k % 2 == 0 else "C1", alpha=0.4)
                ax.plot(np.full(ok.size, k), ok, "k.", markersize=6)
            ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=7)
            ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ax.set_title(_short(task), fontsize=9)
    fig.suptitle("GFDT vs joint: bar = mean over seeds, dots = seeds", fontsize=9)
    fig.tight_layout()
    name = "sample_efficiency.png"
    fig.savefig(img_dir / name, dpi=90)
    plt.close(fig)
    return name


def _iqr_cuts(arms: dict[str, list[RunSummary]], rep: str) -> list[str]:
    """Each swap's change of spread against the own guidance on the same seeds, pooled and between seeds.

    The GFDT paper reports an IQR cut from ranking with another guidance. Over the pooled final episodes of every
    seed, such a cut mostly counts episodes that stop falling; the same cut of the per-seed means (with their
    min-max and bootstrap interval) says whether the seeds themselves land closer together."""
    rows = []
    for a in sorted(arms):
        runs = arms[a]
        for lab in sorted({k for r in runs for k in r.swaps}):
            have = sorted((r for r in runs if lab in r.swaps), key=lambda r: r.seed)
            if len(have) < 2:
                continue
            sw_ep = spread(np.concatenate([np.asarray(r.swaps[lab]["normalized"], dtype=float) for r in have]))
            own_ep = spread(np.concatenate([r.final_episodes for r in have]))
            sw = between_seeds([float(np.mean(r.swaps[lab]["normalized"])) for r in have])
            own = between_seeds([r.final_score for r in have])
            rows.append(f"| {a} | {lab} | {len(have)} | {_fmt(own_ep['iqr'])} -> {_fmt(sw_ep['iqr'])} | "
                        f"{_cut(own_ep['iqr'], sw_ep['iqr'])} | {_fmt(own['iqr'])} -> {_fmt(sw['iqr'])} | "
                        f"{_cut(own['iqr'], sw['iqr'])} | {_range(own['min'], own['max'])} -> "
                        f"{_range(sw['min'], sw['max'])} | {_range(own['lo'], own['hi'], ' to ')} -> "
                        f"{_range(sw['lo'], sw['hi'], ' to ')} |")
    if not rows:
        return []
    return ["", "The swaps' change of spread, own guidance -> swap on the same seeds (swaps with at least two "
            "seeds): the IQR over the pooled final episodes and its change, which mostly counts episodes that fall "
            "or stop falling; beside it the between-seed counterpart, from the per-seed means: their IQR and its "
            f"change, their min-max, and the 95% interval of their mean (bootstrap over seeds, {REPS} resamples, "
            f"fixed seed; {_FEW_SEEDS}). Command: `{rep}`.", "",
            "| policy arm | ranked by | seeds | IQR episodes | change | IQR seeds | change | min-max seeds | "
            "mean 95% interval |", "|---|---|---|---|---|---|---|---|---|", *rows]


def _cut(before: float, after: float) -> str:
    """The relative change of a spread, in percent (n/a from a zero or unmeasured spread)."""
    if before != before or after != after or before == 0:
        return "n/a"
    return f"{100 * (after - before) / before:+.0f}%"


def _data_line(arms: dict[str, list[RunSummary]]) -> list[str]:
    """Which file of the task's dataset the cell's runs trained on, by the fingerprint each ``result.json``
    records. A dataset collected again can be another file (another machine, another collector): runs on two
    files do not measure one problem, and the config check that drops stale summaries cannot see it."""
    by_print: dict[str, list[str]] = {}
    for a in sorted(arms):
        for r in sorted(arms[a], key=lambda r: r.seed):
            fp = (r.result.get("dataset") or {}).get("fingerprint") or "not recorded"
            by_print.setdefault(fp, []).append(f"{a} seed {r.seed}")
    if len(by_print) == 1:
        fp = next(iter(by_print))
        return (["", f"Data: every run above trained on the same file (dataset fingerprint `{fp}`)."]
                if fp != "not recorded" else [])
    files = "; ".join(f"`{fp}`: {', '.join(keys)}" for fp, keys in by_print.items())
    return ["", f"**Data: the runs above trained on {len(by_print)} different files of this dataset**, so their "
                f"spread mixes the data's draw into the seeds' (by dataset fingerprint: {files})."]


# What each authors' code a reference JSON can come from ran, and the script that wrote the JSON (check.REFERENCE_CODES)
_REFERENCE_CODES = {
    "dql": ("Diffusion-QL", "lab/benchmarks/reference_score.py",
            "The reference Diffusion-QL code (its own `Diffusion_QL.train` and `sample_action`, gn from its table, "
            "constant LR, raw observations and rewards: its own pipeline, not a preset's)", False),
    "idql": ("IDQL", "lab/benchmarks/reference_idql.py",
             "The reference IDQL code (github.com/philippe-eecs/IDQL: its own `DDPMIQLLearner.update` with its "
             "launcher's D4RL-locomotion settings, batch 512, rewards through its own `normalize_returns`, trained on "
             "its 95% split; selection by its own `eval_actions`, 64 candidates, argmax of the target critics' min Q; "
             "its own pipeline, not a preset's; run in a JAX venv of its own, docs/lab/runbook.md)",
             True),
}


def _reference_check(exp: DictConfig, runs: list[RunSummary]) -> list[str]:
    """The authors' own code (Diffusion-QL, IDQL), trained on the same dataset for the same steps and scored on the
    same episodes (``lab/benchmarks/reference_score.py``, ``reference_idql.py``), beside the grid's arm of the same
    seed at the same steps: one section per ``reference`` entry (a mapping, or a list of them).

    Why it is in the report: an arm that scores badly is only a finding about its algorithm if the authors' code
    does the same on the same data; otherwise it is a bug in modzoo's version."""
    refs = exp.get("reference")
    if not refs:
        return []
    out: list[str] = []
    for ref in (list(refs) if not isinstance(refs, (dict, DictConfig)) else [refs]):
        out += _one_reference(exp, runs, ref)
    return out


def _one_reference(exp: DictConfig, runs: list[RunSummary], ref: Any) -> list[str]:
    if not Path(str(ref.get("dir", ""))).is_dir():
        return []
    arm = str(ref.get("arm", REFERENCE_ARM))
    name, script, what, has_final = _REFERENCE_CODES[str(ref.get("code", "dql"))]
    ours = {(r.task, r.seed): dict(r.curve) for r in runs if r.arm == arm}
    rows, episodes, finals = [], set(), set()
    tasks = set(exp.get("tasks") or [])
    for f in sorted(Path(str(ref.dir)).glob("*.json")):
        d = json.loads(f.read_text())
        if tasks and d["task"] not in tasks:  # a reference directory shared by experiments of other tasks
            continue
        episodes.add(d.get("episodes"))  # None: a JSON written before the script recorded its episode count
        finals.add(d.get("final_episodes"))
        for pt in d.get("curve", []):
            m = ours.get((d["task"], int(d["seed"])), {}).get(int(pt["step"]))
            n = f" ({pt['episodes']})" if "episodes" in pt and pt["episodes"] != d.get("episodes") else ""
            rows.append(f"| {d['task']} | {d['seed']} | {pt['step']}{n} | {pt['normalized_mean']:.1f} ± "
                        f"{pt['normalized_std']:.1f} | {pt['mean_length']:.0f} | "
                        f"{_fmt(m) if m is not None else 'n/a'} |")
    if not rows:
        return []
    counts = "/".join(str(e) for e in sorted(episodes - {None}))
    over = (f"{counts} episodes per evaluation" + (" where the JSON records it" if None in episodes else "")
            if counts else "episodes per evaluation (the JSONs do not record how many)")
    final = "/".join(str(e) for e in sorted(finals - {None})) if has_final else ""
    over += "; a step with another count names it in brackets" if final else ""
    extra = f"--final-episodes {final} " if final else ""
    return [f"## Reference check: the authors' {name} on the same data", "",
            f"{what}, trained on modzoo's "
            f"dataset for the same number of steps and scored from the same env seeds as modzoo's `{arm}` run of the "
            f"same seed{_arm_preset(exp, arm)} (normalized score, mean ± std over {over}; mean episode length; "
            f"modzoo's column is that run's evaluation at the step, its `final_eval_episodes` at the last one). "
            f"Command per row: `python {script} --reference-dir <its checkout> "
            f"--task TASK --steps {exp.budget.get('policy_steps')} --eval-every {exp.budget.get('eval_every')} "
            + (f"--episodes {counts} " if counts else "") + extra + "--seed SEED --json "
            f"{ref.dir}/TASK-seedSEED.json` (the reference's code stays outside modzoo).", "",
            f"| task | seed | step | reference | reference episode length | modzoo {arm} |",
            "|---|---|---|---|---|---|",
            *rows, ""]


def _beside(exp: DictConfig, runs: list[RunSummary], beside: tuple[DictConfig, list[RunSummary]] | None
            ) -> list[str]:
    """This grid's final scores next to another experiment's (``beside: {experiment: NAME}``) for each task and
    arm both ran, e.g. the 50k grid beside the 5k one: what more training changed. The other grid's stale runs are
    left out as its own report leaves them out; a task whose two grids read different dataset files says so (the
    fingerprints in the summaries), since then the rows are not the same problem. ``at_steps: true`` adds every
    arm of both grids at the policy steps both evaluated (:func:`_at_steps`). ``beside``: :func:`_beside_grid`."""
    if beside is None:
        return []
    other, theirs = beside
    cells: dict[tuple[str, str], tuple[list[RunSummary], list[RunSummary]]] = {}
    for side, rs in ((0, runs), (1, theirs)):
        for r in rs:
            cells.setdefault((r.task, r.arm), ([], []))[side].append(r)
    rows, shown = [], set()
    for (task, arm), (ours, others) in sorted(cells.items()):
        if not ours or not others:
            continue
        shown.add(arm)
        a, b = spread([r.final_score for r in ours]), spread([r.final_score for r in others])
        prints = [{r.result.get("dataset", {}).get("fingerprint") for r in side} for side in (ours, others)]
        same = "yes" if prints[0] == prints[1] and len(prints[0]) == 1 else "no"
        rows.append(f"| {task} | {arm} | {_fmt(a['mean'])} ± {_fmt(a['std'])} ({a['n']}) | "
                    f"{_fmt(b['mean'])} ± {_fmt(b['std'])} ({b['n']}) | {same} |")
    at_steps = _at_steps(exp, other, runs, theirs) if (exp.get("beside") or {}).get("at_steps") else []
    heading = [f"## Beside experiment `{other.name}` ({other.get('report', '')})", ""]
    if not rows:  # no arm in common (flow arms beside diffusion ones): the steps in common only
        return [*heading, *at_steps] if at_steps else []
    steps = [f"{e.budget.get('policy_steps')}" for e in (exp, other)]
    ours_set, settings = ([x for x in _arm_settings(e) if x.split("`")[1] in shown] for e in (exp, other))
    return [*heading,
            f"Final normalized score per task and arm, mean ± std across seeds (seeds in brackets): this grid at "
            f"{steps[0]} policy steps, `{other.name}` at {steps[1]}. `same data`: both grids' runs of the task read "
            f"the same dataset file (its fingerprint); `no` means the task's dataset was rebuilt in between "
            f"(docs/datasets.md lists the replaced files), so the row compares two problems. The arms' settings "
            f"differ too: here {'; '.join(ours_set) or 'the plugin defaults'}; there "
            f"{'; '.join(settings) or 'the plugin defaults'}. Command: `modzoo experiment {exp.name} --report-only`.",
            "", f"| task | arm | {exp.name} | {other.name} | same data |", "|---|---|---|---|---|", *rows, "",
            *at_steps]


def _episodes_at(run: dict[str, Any], step: int) -> Any:
    """How many episodes the evaluation at ``step`` of a run with these settings (a :func:`plan` spec's ``run``)
    ran: the final count at the last policy step (the interim one where none is set), the interim one before."""
    if step >= int(run.get("policy_steps", 0)):
        return run.get("final_eval_episodes") or run.get("eval_episodes")
    return run.get("eval_episodes")


def _at_steps(exp: DictConfig, other: DictConfig, ours: list[RunSummary], theirs: list[RunSummary]) -> list[str]:
    """Every arm of both grids at the policy steps both evaluated (``beside: {at_steps: true}``), read from the
    runs' curves: for grids whose arms differ (flow policies beside diffusion ones), the same step is the only
    common ground. Per task both grids ran, a row per grid and arm: mean ± std across seeds (seeds in brackets)
    and the episodes behind each seed's point, since interim evaluations are smaller than final ones."""
    settings = {e.name: {spec.arm: spec.run for spec in plan(e)} for e in (exp, other)}  # budget + arm's run
    lines = []
    for task in sorted({r.task for r in ours} & {r.task for r in theirs}):
        by_arm: dict[tuple[str, str], list[RunSummary]] = {}
        for e, rs in ((exp, ours), (other, theirs)):
            for r in rs:
                if r.task == task:
                    by_arm.setdefault((e.name, r.arm), []).append(r)
        per_grid = [{s for (g, _), rs in by_arm.items() if g == e.name for r in rs for s, _ in r.curve}
                    for e in (exp, other)]
        steps = sorted(per_grid[0] & per_grid[1])
        if not steps:
            continue
        rows = []
        for (grid, arm), rs in by_arm.items():
            curves, cells = [dict(r.curve) for r in rs], []
            for step in steps:
                vals = [c[step] for c in curves if step in c]
                sp = spread(vals) if vals else None
                cells.append(f"{_fmt(sp['mean'])} ± {_fmt(sp['std'])} ({sp['n']}; "
                             f"{_episodes_at(settings[grid][arm], step)})" if sp else "n/a")
            rows.append(f"| {grid} | {arm} | " + " | ".join(cells) + " |")
        lines += [f"### {task}: every arm at the steps both grids evaluated", "",
                  f"Normalized score at each policy step that both `{exp.name}` and `{other.name}` evaluated on this "
                  f"task, from the runs' curves (`curve.csv`): mean ± std across seeds, then in brackets the seeds "
                  f"and the episodes of each seed's evaluation at that step (interim evaluations are smaller than "
                  f"final ones, so their points are noisier). Command: `modzoo experiment {exp.name} --report-only`.",
                  "", "| grid | arm | " + " | ".join(f"{s} steps" for s in steps) + " |",
                  "|---|---|" + "---|" * len(steps), *rows, ""]
    return lines


def _arm_preset(exp: DictConfig, arm: str) -> str:
    """`` under preset P`` for an arm run under a preset: the reference beside it runs without one."""
    preset = ((exp.get("arms") or {}).get(arm) or {}).get("preset")
    return f" under preset {preset}" if preset else ""


def _arm_settings(exp: DictConfig) -> list[str]:
    """Each arm's preset, overrides and run settings, so that a row's score can be read with what made it."""
    out = []
    for name, arm in exp.arms.items():
        parts = []
        if arm.get("preset"):
            parts.append(f"preset {arm.preset}")
        parts += [str(o) for o in arm.get("overrides", []) or []]
        parts += [f"run.{k}={v}" for k, v in (arm.get("run") or {}).items()]
        if parts:
            out.append(f"`{name}`: {', '.join(parts)}")
    return out


def _grid_cost(runs: list[RunSummary]) -> str:
    """What the finished runs cost, from their summaries alone: process time summed over runs (each run is one
    process: its training phases, interim and final evaluations), that of the swap evaluations that recorded theirs,
    and the span from the first run's start to the last one's end (start = end minus that run's own time)."""
    import datetime as dt
    spans = []
    for r in runs:
        t = sum(ph.get("wall_s", 0.0) + ph.get("eval_wall_s", 0.0) for ph in r.result.get("phases", []))
        end = r.result.get("finished")
        spans.append((t, dt.datetime.fromisoformat(end) if end else None))
    if not spans:
        return ""
    total = sum(t for t, _ in spans)
    swaps = [sw for r in runs for sw in r.swaps.values()]
    timed = [float(sw["wall_s"]) for sw in swaps if "wall_s" in sw]
    if not timed:
        swap_cost = "swap evaluations not counted"
    else:
        swap_cost = f"their {len(timed)} timed swap evaluations took {sum(timed) / 3600:.1f} h more"
        if len(swaps) > len(timed):
            swap_cost += f", {len(swaps) - len(timed)} more were not timed"
    line = (f"- cost: the {len(runs)} finished runs took {total / 3600:.1f} h of process time in all (training "
            f"and evaluation; {swap_cost})")
    ends = [(e - dt.timedelta(seconds=t), e) for t, e in spans if e is not None]
    if ends:
        first, last = min(a for a, _ in ends), max(b for _, b in ends)
        line += f", finishing between {first:%Y-%m-%d %H:%M} and {last:%Y-%m-%d %H:%M} (the machine's local time)"
    return line + "."


def _overview(groups: dict[str, dict[str, list[RunSummary]]], rep: str) -> list[str]:
    """Every task's final scores side by side (mean ± std across seeds, and the number of seeds), so that an arm's
    standing across tasks is read in one place; the per-task sections below hold the full spreads."""
    if len(groups) < 2:
        return []
    tasks = sorted(groups)
    arms = sorted({a for t in tasks for a in groups[t]})
    short = [_short(t) for t in tasks]
    out = ["## All tasks", "", "Final D4RL-normalized score per arm and task: mean ± std across seeds (population "
           f"std), seeds in brackets. Command: `{rep}`.", "",
           "| arm | " + " | ".join(short) + " |", "|---|" + "---|" * len(tasks)]
    for a in arms:
        cells = []
        for t in tasks:
            s = spread([r.final_score for r in groups[t].get(a, [])])
            cells.append("" if not s["n"] else f"{_fmt(s['mean'])} ± {_fmt(s['std'])} ({s['n']})")
        out.append(f"| {a} | " + " | ".join(cells) + " |")
    return out + [""]


def _aggregate(exp: DictConfig, groups: dict[str, dict[str, list[RunSummary]]], rep: str) -> list[str]:
    """Each arm's runs pooled across the tasks every arm has finished runs on: IQM with its stratified-bootstrap
    interval, and the probability that the GFDT arm of each ``gfdt_pairs`` entry beats its joint arm
    (:mod:`modzoo_lab.grid.aggregate`). Tasks some arm lacks are left out, so that every arm is read on the same
    tasks. A grid of one task has no pooled table (its task section says the same), only the pairs."""
    arms = sorted({a for t in groups for a in groups[t]})
    tasks = [t for t in sorted(groups) if all(groups[t].get(a) for a in arms)]
    scores = {a: {t: [r.final_score for r in groups[t][a]] for t in tasks} for a in arms}
    pairs = [(g, j) for g, j in (exp.get("gfdt_pairs", {}) or {}).items() if g in scores and j in scores]
    if not tasks or (len(tasks) < 2 and not pairs):
        return []
    short = ", ".join(_short(t) for t in tasks)
    if len(tasks) == 1:
        out = ["## GFDT against joint", ""]
    else:
        out = ["## Across tasks", "",
               f"Each arm's final normalized scores pooled over {short} (the tasks on which every arm has finished "
               "runs): the mean, and the interquartile mean (IQM: the mean of the middle half of the runs, which "
               "one collapsed seed moves far less) with its 95% interval from a stratified bootstrap (each task's "
               f"runs resampled within that task, {REPS} resamples, fixed seed; Agarwal et al. 2021, the method of "
               f"`rliable`). Command: `{rep}`.", "",
               "| arm | tasks | runs | mean | IQM | IQM 95% interval |", "|---|---|---|---|---|---|"]
        for a in arms:
            pooled = [x for t in tasks for x in scores[a][t]]
            point, lo, hi = iqm_interval(scores[a])
            out.append(f"| {a} | {len(tasks)} | {len(pooled)} | {_fmt(float(np.mean(pooled)))} | {_fmt(point)} | "
                       f"{_between(lo, hi, scores[a])} |")
        out += ["", *_uneven_note(scores, tasks)]
    if pairs:
        over = "averaged over the tasks above" if len(tasks) > 1 else f"here {short} alone"
        out += ["Probability of improvement: the chance that a run of the GFDT arm scores above a run of its "
                f"joint arm on the same task (ties count half), {over}, with its 95% "
                "stratified-bootstrap interval; 0.5 is a tie, and an interval that holds 0.5 does not tell the "
                "two apart. It counts wins, not their size: a task where both arms fail by a hair's difference "
                "weighs as much as one where one arm wins by far, so read it beside the per-task scores. The "
                "IQM difference (the GFDT arm's IQM less the joint arm's, in normalized points, with its interval "
                "from the same stratified bootstrap) says by how much."
                + ("" if len(tasks) > 1 else f" Command: `{rep}`."), "",
                "| GFDT arm | joint arm | P(GFDT > joint) | 95% interval | IQM difference | 95% interval |",
                "|---|---|---|---|---|---|"]
        for g, j in pairs:
            p, lo, hi = probability_of_improvement(scores[g], scores[j])
            d, dlo, dhi = iqm_difference(scores[g], scores[j])
            out.append(f"| {g} | {j} | {_fmt(p, 2)} | {_between(lo, hi, scores[g], scores[j], digits=2)} | "
                       f"{_fmt(d)} | {_between(dlo, dhi, scores[g], scores[j])} |")
        out.append("")
    return out


def _uneven_note(scores: dict[str, dict[str, list[float]]], tasks: list[str]) -> list[str]:
    """A warning where the arms hold different numbers of runs per task: a pooled IQM weighs each task by its runs,
    so while one arm has more seeds of a high-scoring task than another, their IQMs (and the IQM difference) differ
    by the mix of tasks as well as by the arms. The probability of improvement averages tasks equally."""
    counts = {a: tuple(len(scores[a][t]) for t in tasks) for a in scores}
    if len(set(counts.values())) < 2:
        return []
    each = "; ".join(f"{a}: " + ", ".join(f"{_short(t)} {n}" for t, n in zip(tasks, c)) for a, c in counts.items())
    return [f"The arms hold different numbers of runs per task ({each}). The pooled IQM weighs each task by its "
            "runs, so until the counts match, the IQMs above (and an IQM difference between two arms) lean toward "
            "the tasks with more runs; the probability of improvement averages the tasks equally and does not.", ""]


def _between(lo: float, hi: float, *scores: dict[str, list[float]], digits: int = 1) -> str:
    """A bootstrap interval, or n/a while some task holds a single run: resampling one run gives it back every
    time, an interval of zero width that would read as certainty."""
    if any(len(v) < 2 for sc in scores for v in sc.values()):
        return "n/a (one run on a task)"
    return f"{_fmt(lo, digits)} to {_fmt(hi, digits)}"


def _gfdt_ratios(exp: DictConfig, stats: dict[str, Any]
                 ) -> list[tuple[str, str, str, float, float, float, float]]:
    """(GFDT arm, joint arm, runs, time ratio of means, of medians, CPU time ratio of means, peak RSS ratio)."""
    pairs = exp.get("gfdt_pairs", {}) or {}
    out = []
    for g, j in pairs.items():
        if g not in stats or j not in stats:
            continue

        def cost(a):
            ph = {k: v for k, v in stats[a]["phases"].items() if k != "eval"}
            extra = exp.arms[a].get("guidance_from") if a in exp.arms else None
            t = sum(v["wall_s"] for v in ph.values())
            tm = float(np.median(stats[a]["train_wall_s"])) if stats[a]["train_wall_s"] else float("nan")
            cpu = sum(v["cpu_s"] for v in ph.values())  # nan if a phase has no CPU time
            mem = _nanmax([v["rss_peak_mb"] for v in ph.values()])
            if extra:  # the shared guidance's training counts against this arm too
                gph = stats[extra]["phases"].get("guidance") if extra in stats else None
                if not gph:  # its source has no finished run yet: no ratio rather than one without that cost
                    return (float("nan"),) * 4
                t += gph["wall_s"]
                tm += float(np.median(stats[extra]["guidance_wall_s"]))
                cpu += gph["cpu_s"]
                mem = _nanmax([mem, gph["rss_peak_mb"]])
            return t, tm, cpu, mem
        (tg, tmg, cg, mg), (tj, tmj, cj, mj) = cost(g), cost(j)
        out.append((g, j, f"{stats[g]['seeds']['n']} / {stats[j]['seeds']['n']}",
                    *(x / y if y else float("nan") for x, y in ((tg, tj), (tmg, tmj), (cg, cj), (mg, mj)))))
    return out


def time_limit(task: str) -> int | None:
    """The task's episode time limit, or None where it has none or the task cannot be read here (a Minari
    dataset that is not installed): its ``fell`` cells then read n/a."""
    try:
        return task_of(task).max_episode_steps
    except ModzooError:
        return None


def fell(evals: list[dict[str, Any]], limit: int | None) -> str:
    """``"k/n"``: of the n episodes of these evaluations, the k that ended before the time limit, which the
    env does only when the robot falls (halfcheetah's never does); a score mean hides whether a low number is
    every episode walking worse or some falling at once and the rest walking well."""
    lengths = [n for ev in evals for n in (ev.get("lengths") or [])]
    if limit is None or not lengths or len(lengths) != sum(len(ev.get("normalized") or []) for ev in evals):
        return "n/a"
    return f"{sum(n < limit for n in lengths)}/{len(lengths)}"


def _swap_rows(arms: dict[str, list[RunSummary]], limit: int | None) -> list[str]:
    """One row per policy arm and swap, beside the same policies ranked by their own guidance on the same seeds
    (a swap missing for some seed must not be compared with an own-guidance figure over other seeds)."""
    rows = []
    for a in sorted(arms):
        runs = arms[a]
        for lab in sorted({k for r in runs for k in r.swaps}):
            have = [r for r in runs if lab in r.swaps]
            sw = spread([float(np.mean(r.swaps[lab]["normalized"])) for r in have])
            sw_ep = spread(np.concatenate([np.asarray(r.swaps[lab]["normalized"], dtype=float) for r in have]))
            own = spread([r.final_score for r in have])
            own_ep = spread(np.concatenate([r.final_episodes for r in have]))
            g = have[0].swaps[lab].get("guidance")
            rows.append(f"| {a} | {lab} ({g}) | {sw['n']} | {_fmt(sw['mean'])} | {_fmt(sw['std'])} | "
                        f"{_fmt(sw['median'])} | {_fmt(sw['iqr'])} | {_fmt(sw_ep['iqr'])} | "
                        f"{fell([r.swaps[lab] for r in have], limit)} | {_fmt(own['mean'])} | "
                        f"{_fmt(own['iqr'])} | {_fmt(own_ep['iqr'])} | "
                        f"{fell([r.result.get('eval', {}) for r in have], limit)} |")
    return rows


def split_stale(exp: DictConfig, runs: list[RunSummary]) -> tuple[list[RunSummary], list[str]]:
    """Summaries whose saved config differs from the one the grid would run now are left out of every number
    (a changed default must not mix two configs in one cell); returns (kept, one line per left-out run)."""
    specs = {(s.task, s.arm, s.seed): s for s in plan(exp)}
    kept, left = [], []
    for r in runs:
        cfg = Path(exp.summaries) / r.task / r.arm / f"seed{r.seed}" / "config.yaml"
        spec = specs.get((r.task, r.arm, r.seed))
        drift = config_drift(spec, cfg) if spec is not None and cfg.exists() else []
        if drift:
            left.append(f"{r.task}/{r.arm}/seed{r.seed}: {'; '.join(drift)}")
        else:
            kept.append(r)
    return kept, left


def rebuilt_runs(summaries: str | Path) -> list[str]:
    """The report's lines on the runs trained a second time after their summary was committed (``--rebuild``,
    :mod:`modzoo_lab.grid.summary`): how many reproduced their first record, and each that did not."""
    records = {p.parent: json.loads(p.read_text()) for p in sorted(Path(summaries).glob("*/*/seed*/rebuild.json"))}
    if not records:
        return []
    name = {d: f"{d.parent.parent.name}/{d.parent.name}/{d.name}" for d in records}
    same = [name[d] for d, r in records.items() if r["reproduced"]]
    differ = [f"- {name[d]}: {'; '.join(r['differences'])} (the first record: `{d / 'before-rebuild'}`)"
              for d, r in records.items() if not r["reproduced"]]
    its = "its" if len(records) == 1 else "their"
    return [f"**Trained twice**: {len(records)} {'run was' if len(records) == 1 else 'runs were'} trained again "
            f"(for the checkpoints a swap, or a run reusing {its} guidance, needed: `--rebuild`) after {its} first "
            f"summary had been committed; "
            f"{its} time rows are the second training's. Reproduced the first record (curve and final returns "
            f"equal, float for float): {len(same)}{' (' + ', '.join(same) + ')' if same else ''}. "
            f"Did not: {len(differ)}"
            + ((" (its summary now holds" if len(differ) == 1 else " (their summaries now hold")
               + " the second training):" if differ else "."), *differ, *noise_floor(summaries)]


def rebuild_pairs(summaries: str | Path) -> list[tuple[str, float, float, bool]]:
    """(run, first final score, second final score, same data file) for every run trained twice: the first record
    read from ``before-rebuild/result.json`` where the rebuild differed (``rebuild.json``'s copy where it
    reproduced, which kept no second folder), the second from the summary itself."""
    out = []
    for rec in sorted(Path(summaries).glob("*/*/seed*/rebuild.json")):
        d = rec.parent
        after = _summary_json(d / "result.json")
        first = d / "before-rebuild" / "result.json"
        before = _summary_json(first) if first.is_file() else json.loads(rec.read_text())["before"]
        prints = {(r.get("dataset") or {}).get("fingerprint") for r in (before, after)}
        same = first.is_file() and len(prints) == 1 and None not in prints
        out.append((f"{d.parent.parent.name}/{d.parent.name}/{d.name}", float(before["normalized_score"]),
                    float(after["normalized_score"]), same or not first.is_file()))
    return out


def noise_floor(summaries: str | Path) -> list[str]:
    """The noise floor that a machine alone puts under every cell: the same seeded run, same config and same
    data file, trained on two machines. Seeded runs reproduce float for float on one CPU make and not across
    makes (MKL picks its kernels by CPU), so two arms closer than this are not told apart by one seed each."""
    pairs = rebuild_pairs(summaries)
    moved = [(n, b, a) for n, b, a, _ in pairs if a != b]
    if not moved:
        return []
    same = all(ok for *_, ok in pairs)
    cells = "; ".join(f"{n}: {_fmt(b)} -> {_fmt(a)} ({a - b:+.1f})" for n, b, a in moved)
    data = ", same data file by its fingerprint" if same else ""
    return ["", f"**Noise floor between machines.** The same seeded run (same config{data}) trained on two "
            "machines moved its final score by up to "
            f"{max(abs(a - b) for _, b, a in moved):.1f} points: {cells} (first record: the summary folder's "
            f"`before-rebuild/`; {len(pairs) - len(moved)} of {len(pairs)} rebuilds reproduced theirs exactly). "
            "A difference between two cells smaller than this can be the machine, not the method."]


def report_text(exp: DictConfig, img_dir: Path, img_rel: str, grid_seconds: float | None = None) -> str:
    """The whole report as :func:`write_report` writes it (plots into ``img_dir``): the rendered tables plus the
    lines on runs trained twice and on stale summaries, which only the summaries directory knows about. One
    function, so that a check that the committed report is regenerated compares against every line of it."""
    runs, stale = split_stale(exp, load_summaries(exp.summaries))
    text = render(exp, runs, img_dir, img_rel, grid_seconds)
    twice = rebuilt_runs(exp.summaries)
    if twice:
        text = text.replace("\n## Budget\n", "\n" + "\n".join(twice) + "\n\n## Budget\n", 1)
    if stale:
        text = text.replace("\n## Budget\n", "\n**Left out of every number below**: "
                            f"{len(stale)} run summaries made under another config than this grid's current one "
                            "(rerun them, or restore the setting):\n\n" + "\n".join(f"- {x}" for x in stale)
                            + "\n\n## Budget\n", 1)
    return text


def write_report(exp: DictConfig, grid_seconds: float | None = None) -> Path:
    out = Path(exp.report)
    img_dir = out.parent / "results" / str(exp.name)
    text = report_text(exp, img_dir, os.path.relpath(img_dir, out.parent), grid_seconds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return out
