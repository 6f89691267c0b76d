"""Running a grid: each run and swap of a plan as a job, resumable, on a local process pool or on Ray.

Every finished run leaves a small summary (``result.json``, the evaluation curve as ``curve.csv``, ``swaps.json``)
copied to the experiment's ``summaries`` folder; the report (:mod:`modzoo_lab.grid.report`) is built from those
alone, so it can be regenerated from the repository without the checkpoints.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from modzoo.bullet.data import dataset_file
from modzoo.errors import ConfigError, DatasetError
from modzoo.run.evaluation import evaluate, load_policy_and_guidance
from modzoo.run.training import train

from .plan import (
    RunSpec,
    config_drift,
    finished_elsewhere,
    is_finished,
    load_experiment,
    plan,
    recorded_swaps,
    spec_config,
    stale_runs,
    swap_jobs,
)
from .report import write_report
from .summary import BEFORE, reproduced, set_aside, update_swaps, write_summary


def wait_for_guidance(run_dir: str | Path, poll: float = 5.0, timeout: float = 7 * 24 * 3600) -> Path:
    """Block until the run whose guidance is reused has saved it (it was submitted earlier and is running in
    another worker), or raise if that run failed."""
    run_dir = Path(run_dir)
    t0 = time.time()
    while not is_finished(run_dir):
        if (run_dir / "FAILED").exists():
            raise RuntimeError(f"the run whose guidance this one reuses failed: {run_dir}")
        if time.time() - t0 > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {run_dir} to finish")
        time.sleep(poll)
    return run_dir / "guidance.pt"


def execute_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one run (or skip it when finished; resume it when interrupted). Runs in a worker process.

    A run dir whose saved config differs from the current one is left untouched and reported as ``stale``."""
    s = RunSpec(**spec)
    drift = config_drift(s)
    if drift:
        return {"key": s.key, "status": "stale", "drift": drift, "out": s.out}
    if is_finished(s.out):
        write_summary(s)
        return {"key": s.key, "status": "skipped"}
    Path(s.out).mkdir(parents=True, exist_ok=True)
    if not _take_lock(Path(s.out)):
        return {"key": s.key, "status": "busy"}
    (Path(s.out) / "FAILED").unlink(missing_ok=True)
    t0 = time.time()
    try:
        set_aside(s)  # its summary stands (trained elsewhere): kept aside, then compared when this run finishes
        reused = {"guidance_ckpt": str(wait_for_guidance(s.guidance_from))} if s.guidance_from else {}
        cfg = spec_config(s, **reused)
        result = train(cfg, progress=False, resume=(Path(s.out) / "config.yaml").exists())
    except BaseException as e:  # leave a marker so runs waiting on this one stop waiting
        Path(s.out).mkdir(parents=True, exist_ok=True)
        (Path(s.out) / "FAILED").write_text(f"{type(e).__name__}: {e}\n")
        raise
    finally:
        (Path(s.out) / "LOCK").unlink(missing_ok=True)
    write_summary(s)
    rebuilt = Path(s.out) / "rebuild.json"
    return {"key": s.key, "status": "ok", "seconds": time.time() - t0, "normalized": result.normalized_score,
            "pid": os.getpid(), **({"rebuild": json.loads(rebuilt.read_text())} if rebuilt.exists() else {})}


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the live process training ``run_dir`` (its ``LOCK``), or None: no lock, or a stale one whose
    process is gone."""
    try:
        pid = int((run_dir / "LOCK").read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, under another user
        return pid
    return pid


def _take_lock(run_dir: Path) -> bool:
    """One process per run dir: a second grid (or an orphaned worker of an interrupted one) must not train into
    the same directory. A lock whose process is gone is stale and taken over."""
    lock = run_dir / "LOCK"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if lock_holder(run_dir) is not None:
                return False  # alive: someone else is training this run
            lock.unlink(missing_ok=True)  # stale
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _swap_pair(job: dict[str, Any]) -> dict[str, Any]:
    """The pair a swap evaluates, down to the checkpoint files: a cached result counts only for the same pair (a
    changed seed list pairs another guidance run; a retrained run writes new checkpoints)."""
    return {"guidance_run": job["guidance_run"],
            "checkpoints_ns": [(Path(job["policy_run"]) / "policy.pt").stat().st_mtime_ns,
                               (Path(job["guidance_run"]) / "guidance.pt").stat().st_mtime_ns]}


def swap_cached(job: dict[str, Any]) -> bool:
    """Whether the policy run's ``swaps.json`` already holds this swap for the same pair of checkpoints."""
    old = recorded_swaps(job["policy_run"], {}).get(job["label"])
    if old is None:
        return False
    if old.get("before_rebuild"):  # evaluated where the policy run first trained; its rebuild reproduced that run
        return (old.get("guidance_run") == job["guidance_run"]
                and old.get("episodes", job["episodes"]) == job["episodes"]
                and reproduced(job["guidance_run"]) is not False)
    pair = _swap_pair(job)
    return (old.get("guidance_run") == pair["guidance_run"]
            and old.get("checkpoints_ns", pair["checkpoints_ns"]) == pair["checkpoints_ns"]
            and old.get("episodes", job["episodes"]) == job["episodes"])


def execute_swap(job: dict[str, Any]) -> dict[str, Any]:
    """Evaluate a finished policy ranked by another run's guidance; results go to the policy run's swaps.json."""
    import torch
    torch.set_num_threads(1)
    pdir = Path(job["policy_run"])
    key = job["label"]
    if swap_cached(job):
        return {"key": f"{pdir}:{key}", "status": "skipped"}
    pair = _swap_pair(job)
    t0, c0 = time.perf_counter(), time.process_time()
    policy, guidance = load_policy_and_guidance(pdir / "policy.pt", Path(job["guidance_run"]) / "guidance.pt", "cpu")
    rule = job.get("selection")
    if rule == "none":  # one sample, nothing to rank (drawing N candidates to keep the first would cost N times)
        guidance = None
    elif rule:
        policy.cfg["selection"] = rule
    if guidance is not None and "v" not in guidance.provides and policy.cfg.get("selection") == "expectile":
        # IDQL's expectile weights read V, which this guidance lacks: rank by argmax of Q (IDQL's own extraction),
        # said in the record (the library refuses a rule its guidance cannot drive)
        policy.cfg["selection"] = fallback = "argmax"
    else:
        fallback = None
    scale = job.get("temperature_scale")
    if scale is not None:  # softmax(t * Q) with t scaled (the plan checked that the policy selects by softmax)
        policy.cfg["temperature"] = float(policy.cfg["temperature"]) * float(scale)
    ev = evaluate(policy, guidance, job["task"], episodes=job["episodes"], seed=job["seed"],
                  candidates=1 if rule == "none" else None)
    cost = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}  # loading included
    entry = {**ev.to_dict(), **pair, **cost, "guidance": guidance.algorithm if guidance else "none",
             **({"temperature": policy.cfg["temperature"]} if scale is not None else {}),
             **({"selection": f"{fallback} (expectile needs V)"} if fallback else {})}
    update_swaps(pdir, lambda done: {**done, key: entry},
                 Path(job["summaries"]) if job.get("summaries") else None)
    return {"key": f"{pdir}:{key}", "status": "ok", "normalized": ev.normalized_mean}


# ---- backends ---------------------------------------------------------------------------------------------
Job = tuple[Callable[[dict[str, Any]], dict[str, Any]], dict[str, Any]]


def _safe(fn: Callable[[dict[str, Any]], dict[str, Any]], job: dict[str, Any]) -> dict[str, Any]:
    """Run one job; an exception becomes a "failed" result carrying the job, so it can be retried."""
    try:
        return {**fn(job), "job": job}
    except Exception as e:
        return {"key": f"{job.get('task')}/{job.get('arm', job.get('label'))}/seed{job.get('seed')}",
                "status": "failed", "error": f"{type(e).__name__}: {e}", "detail": traceback.format_exc(),
                "job": job}


def job_ready(job: Job) -> bool:
    """Whether a job can start now without waiting on another: a swap once both of its runs have finished, a run
    that reuses a guidance once the run it takes it from has finished, any other run at once."""
    fn, j = job
    if "policy_run" in j:
        return is_finished(j["policy_run"]) and is_finished(j["guidance_run"])
    return not j.get("guidance_from") or is_finished(j["guidance_from"])


class _Serial:
    """Jobs in this process, one at a time (one worker, runs not isolated)."""
    slots = 1

    def submit(self, fn: Callable, job: dict[str, Any]) -> Any:
        done = Future()  # already resolved: the job ran here
        done.set_result(_safe(fn, job))
        return done

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        return [(h, h.result()) for h in handles]

    def close(self) -> None:
        pass

    abort = close  # the job runs in this process: it stops with it


class _Pool:
    """A local process pool; ``isolate``: a worker serves one job, so a job's peak RSS is its own."""

    def __init__(self, workers: int, isolate: bool):
        import multiprocessing as mp
        self.slots = max(1, workers)
        self.ex = ProcessPoolExecutor(max_workers=self.slots, mp_context=mp.get_context("spawn"),
                                      max_tasks_per_child=1 if isolate else None)

    def submit(self, fn: Callable, job: dict[str, Any]) -> Any:
        return self.ex.submit(_safe, fn, job)

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return [(h, h.result()) for h in done]

    def close(self) -> None:
        self.ex.shutdown()

    def abort(self) -> None:
        """End the workers with the grid: left running, each trains on as an orphan, holding its run's LOCK
        against the next grid. ``ProcessPoolExecutor`` has no public way to stop a busy worker before Python 3.14
        (``terminate_workers``), hence its ``_processes``; a killed run resumes from its last checkpoint."""
        for proc in list((getattr(self.ex, "_processes", None) or {}).values()):
            proc.terminate()
        self.ex.shutdown(wait=False, cancel_futures=True)


class _Ray:
    """Ray tasks with their CPU/GPU needs declared; Ray queues what the cluster cannot place yet, so every ready
    job is submitted at once."""
    slots = 1 << 30

    def __init__(self, ray_cfg: dict[str, Any], isolate: bool):
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray needs ray: pip install -e 'lab[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=ray_cfg.get("address") or None, num_cpus=ray_cfg.get("num_cpus"),
                     include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        self.ray = ray
        self.remote = ray.remote(num_cpus=float(ray_cfg.get("cpus_per_run", 1)),
                                 num_gpus=float(ray_cfg.get("gpus_per_run", 0)),
                                 max_calls=1 if isolate else 0)(_safe)  # 1: a Ray worker process serves one job

    def submit(self, fn: Callable, job: dict[str, Any]) -> Any:
        return self.remote.remote(fn, job)

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        done, _ = self.ray.wait(handles, num_returns=1)
        return [(h, self.ray.get(h)) for h in done]

    def close(self) -> None:
        pass

    def abort(self) -> None:
        """Ray ends a driver's running tasks when the driver disconnects (and a local cluster's workers with it)."""
        self.ray.shutdown()


def _drain(pool: Any, jobs: list[Job], ready: Callable[[Job], bool]) -> tuple[list[dict[str, Any]], list[Job]]:
    """Start each job as soon as it is ready and a slot is free, earlier-listed ready jobs first; return the
    results and the jobs that never became ready (they wait on runs that did not finish)."""
    pending, flight, results = list(jobs), {}, []
    while pending or flight:
        while len(flight) < pool.slots:
            i = next((k for k, job in enumerate(pending) if ready(job)), None)
            if i is None:
                break
            fn, j = pending.pop(i)
            flight[pool.submit(fn, j)] = (fn, j)
        if not flight:
            break
        for h, r in pool.wait(list(flight)):
            fn, _ = flight.pop(h)
            results.append({**r, "fn": fn})
    return results, pending


def run_jobs(jobs: list[Job], backend: str, workers: int, ray_cfg: dict[str, Any] | None = None,
             log: Callable[[str], None] = print, isolate: bool = False) -> list[dict[str, Any]]:
    """Run ``(fn, job)`` pairs on the backend, each as soon as what it needs has finished (``job_ready``), the
    earlier-listed first; failed ones are retried once, then reported.

    Scheduling by readiness rather than in waves means an interrupted grid holds the swaps of every pair of runs
    that had finished, and no worker sits idle waiting on a guidance another worker is still training. A run still
    not ready when nothing else can start (its guidance's run failed, or another process holds it) is started
    anyway and waits or fails in ``wait_for_guidance``; a swap whose runs never finished is left out, with a line
    saying so."""
    if not jobs:
        return []
    if backend == "ray":
        pool: Any = _Ray(ray_cfg or {}, isolate)
    elif backend == "local":
        pool = _Pool(workers, isolate) if workers > 1 or isolate else _Serial()
    else:
        raise ConfigError(f"unknown backend {backend!r}; use local or ray")
    try:
        results, waiting = _drain(pool, jobs, job_ready)
        failed = [(r.pop("fn"), r["job"]) for r in results if r["status"] == "failed"]
        results = [r for r in results if r["status"] != "failed"]
        if failed:
            log(f"retrying {len(failed)} failed job(s) once")
            more, waiting = _drain(pool, failed + waiting, job_ready)
            results += more
        runs = [job for job in waiting if "policy_run" not in job[1]]
        if runs:
            results += _drain(pool, runs, lambda job: True)[0]
        if len(runs) < len(waiting):
            log(f"{len(waiting) - len(runs)} swap evaluation(s) left out: a run they pair did not finish")
    except BaseException:  # Ctrl-C, or a SIGTERM (the CLI turns it into SystemExit): the workers stop too
        pool.abort()
        raise
    pool.close()
    for r in results:
        r.pop("fn", None)
    return results


def _runs_to_train(exp: DictConfig, specs: list[RunSpec], stale: dict[str, list[str]], done: set[str], train: bool,
                   rebuild: bool, log: Callable[[str], None], only: Sequence[str] = ()
                   ) -> tuple[list[RunSpec], dict[str, Path], dict[str, Path]]:
    """The runs to train, in order (``rebuild``: then the runs finished elsewhere that a swap needs), the runs
    finished elsewhere kept as they are, and the summary folders of all runs finished elsewhere, rebuilt or not
    (a rebuild that reproduces its summary carries that summary's swaps over)."""
    kept, summaries, rebuilds = finished_elsewhere(exp, specs, stale if train and rebuild else None, only)
    todo = [s for s in specs if s.out not in stale and s.out not in done and s.out not in summaries] if train else []
    if train:
        log(f"{len(specs)} runs ({len(done)} already finished, skipped; {len(stale)} stale, left alone)")
    if kept:
        log(f"{len(kept)} runs finished elsewhere: their summaries are here but not their run dirs, so they are "
            f"kept and not retrained, and no swap can pair them (it needs their checkpoints). --rebuild trains "
            f"again those a swap needs, each checked against its summary; to retrain any one, delete its summary, "
            f"e.g. {next(iter(kept.values()))}")
    if rebuilds:
        log(f"{len(rebuilds)} runs finished elsewhere are trained again (--rebuild), after the runs still to "
            f"train, for the swaps that need their checkpoints; each is compared with its committed summary when it "
            f"finishes: {', '.join(s.key for s in rebuilds)}")
    return todo + rebuilds, kept, summaries


def _check_datasets(todo: list[RunSpec]) -> None:
    """Every dataset a run still to train reads is there before the first run starts: a missing one would
    otherwise fail its runs in their workers, after the other tasks' runs had trained for hours, and be said only
    at the grid's end."""
    seen: set[str] = set()
    for s in todo:
        if s.data_source not in seen:
            seen.add(s.data_source)
            try:
                dataset_file(s.data_source, task=s.task)
            except DatasetError as e:
                raise DatasetError(f"{s.key} (and every run reading the same data): {e}; no run was started") from None


def _log_rebuild(key: str, rec: dict[str, Any], log: Callable[[str], None]) -> None:
    if rec["reproduced"]:
        log(f"REBUILT {key}: reproduces its committed summary (curve and final returns equal); "
            f"{len(rec['swaps_carried'])} swaps it recorded carried over")
    else:
        log(f"REBUILT {key}: DIFFERS from its committed summary ({'; '.join(rec['differences'][:3])}); the summary "
            f"now holds the run as retrained here, the committed one is kept in its {BEFORE}/ folder")


def run_experiment(name: str, overrides: list[str] | tuple[str, ...] = (), backend: str | None = None,
                   workers: int | None = None, log: Callable[[str], None] = print,
                   report: bool = True, train: bool = True, rebuild: bool = False,
                   rebuild_only: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or resume) the grid and its swaps, each swap as soon as its two runs have finished, then write the
    report (``train=False``: only the swaps whose runs have finished, and the report). ``rebuild``: also train
    again, after the runs still to train, the runs finished elsewhere that a swap still to run needs
    (:mod:`modzoo_lab.grid.summary` says how each is checked against its committed summary); ``rebuild_only``: just
    those of them whose key matches one of these glob patterns (:func:`~modzoo_lab.grid.plan.runs_to_rebuild`)."""
    exp = load_experiment(name, overrides)
    backend = backend or exp.get("backend", "local")
    workers = int(workers or exp.get("workers", 1))
    ray_cfg = OmegaConf.to_container(exp.ray, resolve=True) if "ray" in exp and exp.ray else {}
    specs = plan(exp)
    t0 = time.time()
    if (backend == "ray" and str(exp.budget.get("device", "cpu")) in ("auto", "cuda")
            and not float(ray_cfg.get("gpus_per_run", 0) or 0)):
        log("note: ray.gpus_per_run is 0, so Ray hides the GPUs from every run and device auto trains on CPU; "
            "set ray.gpus_per_run (e.g. 0.25) to use them")
    stale = stale_runs(specs)
    done = {s.out for s in specs if is_finished(s.out) and s.out not in stale}
    results: list[dict[str, Any]] = [{"key": s.key, "status": "stale", "drift": stale[s.out], "out": s.out}
                                     for s in specs if s.out in stale]
    for s in specs:  # finished: nothing to train, but its summary is refreshed (as execute_run would)
        if s.out in done:
            write_summary(s)
            results.append({"key": s.key, "status": "skipped"})
    todo, kept, summaries = _runs_to_train(exp, specs, stale, done, train, rebuild or bool(rebuild_only), log,
                                           rebuild_only)
    results += [{"key": s.key, "status": "summary only"} for s in specs if s.out in kept]
    # A swap pairs runs that have finished or will in this grid; a stale run's policy or guidance is from another
    # config, so no swap pairs it with the current ones. Swaps go first in the queue: each starts as soon as its
    # two runs have finished, so an interrupted grid already holds the swaps of what it finished.
    will_finish = done | {s.out for s in todo}
    swaps: list[Job] = []
    unpaired = 0  # swaps of a summary-only run: its checkpoints are not here
    for j in swap_jobs(exp):
        if not {j["policy_run"], j["guidance_run"]} <= will_finish:
            unpaired += ({j["policy_run"], j["guidance_run"]} <= will_finish | set(kept)
                         and j["label"] not in recorded_swaps(j["policy_run"], summaries))
            continue
        if {j["policy_run"], j["guidance_run"]} <= done and swap_cached(j):
            results.append({"key": f"{j['policy_run']}:{j['label']}", "status": "skipped"})
        else:
            swaps.append((execute_swap, j))
    if swaps:
        log(f"{len(swaps)} inference-time swap evaluations")
    if unpaired:
        log(f"{unpaired} swaps pair a run finished elsewhere and are not recorded in its summary: they cannot run "
            f"here{'' if rebuild else ' (--rebuild trains again the runs they need)'}")
    _check_datasets(todo)
    # a fresh process per job (isolate_runs, default on): a phase's peak RSS is then its run's alone
    results += run_jobs(swaps + [(execute_run, asdict(s)) for s in todo], backend, workers, ray_cfg, log,
                        isolate=bool(exp.get("isolate_runs", True)))
    for r in results:
        if "rebuild" in r:
            _log_rebuild(r["key"], r["rebuild"], log)
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        log(f"FAILED {r['key']}: {r['error']}")
    for r in (r for r in results if r["status"] == "stale"):
        log(f"STALE {r['key']}: its run dir was made with another config ({'; '.join(r['drift'])}); it was left "
            f"alone (not trained, resumed or swapped), but a summary of it still feeds the report. To retrain it "
            f"with the current config, delete {r['out']} and its summary under "
            f"{exp.get('summaries') or 'the summaries folder'}; to keep it, restore the old setting.")
    summary = {"experiment": exp.name, "runs": len(specs), "failed": len(failed), "stale": len(stale),
               "seconds": round(time.time() - t0, 1), "results": results}
    if report:
        write_report(exp, grid_seconds=summary["seconds"])
    return summary
