"""D4RL-format loading: files made elsewhere, d4rl's transition rule, validation, writing, collection."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from modzoo.bullet.collect import DEFAULT_TRANSITIONS, collect, plan
from modzoo.bullet.data import dataset_path, load_dataset, qlearning_transitions, write_d4rl_file
from modzoo.errors import DatasetError

OBS, ACT = 15, 3  # hopper


def _hand_arrays() -> dict[str, np.ndarray]:
    """7 rows: episode A = rows 0-2 ending in a timeout, episode B = rows 3-5 ending in a terminal,
    row 6 = the start of an unfinished episode C. obs[i] is filled with i so rows are easy to follow."""
    n = 7
    obs = np.repeat(np.arange(n, dtype=np.float32)[:, None], OBS, axis=1)
    act = np.repeat((np.arange(n, dtype=np.float32)[:, None] / 10), ACT, axis=1)
    rew = np.arange(1, n + 1, dtype=np.float32)  # 1..7
    term = np.array([0, 0, 0, 0, 0, 1, 0], bool)
    tout = np.array([0, 0, 1, 0, 0, 0, 0], bool)
    return {"observations": obs, "actions": act, "rewards": rew, "terminals": term, "timeouts": tout}


def _write_plain(path: Path, arrays: dict[str, np.ndarray], **attrs: object) -> Path:
    """Write a file the way someone else would: plain h5py, no modzoo."""
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def test_foreign_d4rl_file_loads_with_d4rl_rule(tmp_path: Path) -> None:
    path = _write_plain(tmp_path / "bullet-hopper_medium.hdf5", _hand_arrays())
    ds = load_dataset(str(path))
    assert ds.name == "bullet-hopper-medium-v0"  # from D4RL's file name
    assert ds.path == str(path)
    # d4rl.qlearning_dataset: i in 0..5; row 2 is a timeout -> dropped; row 6 has no successor.
    kept = [0, 1, 3, 4, 5]
    assert len(ds) == 5 and ds.obs_dim == OBS and ds.act_dim == ACT
    np.testing.assert_array_equal(ds.observations[:, 0], kept)
    np.testing.assert_array_equal(ds.next_observations[:, 0], [1, 2, 4, 5, 6])
    np.testing.assert_array_equal(ds.rewards, [1, 2, 4, 5, 6])
    np.testing.assert_array_equal(ds.terminals, [0, 0, 0, 0, 1])
    np.testing.assert_allclose(ds.actions[:, 0], [0.0, 0.1, 0.3, 0.4, 0.5])
    for a in (ds.observations, ds.actions, ds.rewards, ds.next_observations, ds.terminals):
        assert a.dtype == np.float32
    # raw episodes: A = 1+2+3, B = 4+5+6, unfinished C = 7
    np.testing.assert_allclose(ds.episode_returns(), [6, 15, 7])
    np.testing.assert_array_equal(ds.episode_lengths(), [3, 3, 1])
    assert len(ds.fingerprint) == 16


def test_fingerprint_tracks_content(tmp_path: Path) -> None:
    arr = _hand_arrays()
    a = load_dataset(str(_write_plain(tmp_path / "a.hdf5", arr)), task="bullet-hopper-medium-v0")
    b = load_dataset(str(_write_plain(tmp_path / "b.hdf5", arr)), task="bullet-hopper-expert-v0")
    arr["rewards"] = arr["rewards"] + 1
    c = load_dataset(str(_write_plain(tmp_path / "c.hdf5", arr)), task="bullet-hopper-medium-v0")
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert b.name == "bullet-hopper-expert-v0"


def test_without_timeouts_follows_d4rl_step_count() -> None:
    """No 'timeouts' key: d4rl treats step max_episode_steps-1 of each episode as the timeout (and its
    counter restarts at 1 right after a terminal; kept for equality with d4rl)."""
    arr = _hand_arrays()
    term = np.array([0, 0, 0, 1, 0, 0, 0], bool)
    tr = qlearning_transitions(arr["observations"], arr["actions"], arr["rewards"], term, None, max_episode_steps=3)
    # steps: i0 s0 keep, i1 s1 keep, i2 s2 -> final, drop, reset 0; i3 s0 terminal keep -> s=1;
    # i4 s1 keep; i5 s2 final drop
    np.testing.assert_array_equal(tr["observations"][:, 0], [0, 1, 3, 4])
    np.testing.assert_array_equal(tr["terminals"], [0, 0, 1, 0])


def test_load_by_task_name_from_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    assert dataset_path("bullet-hopper-medium-replay-v0") == tmp_path / "bullet-hopper_medium_replay.hdf5"
    with pytest.raises(DatasetError, match="modzoo data collect bullet-hopper-medium-replay-v0"):
        load_dataset("bullet-hopper-medium-replay-v0")
    _write_plain(dataset_path("bullet-hopper-medium-replay-v0"), _hand_arrays())
    ds = load_dataset("bullet-hopper-medium-replay-v0")
    assert ds.name == "bullet-hopper-medium-replay-v0" and len(ds) == 5


def test_unknown_name_is_dataset_error() -> None:
    with pytest.raises(DatasetError, match="bullet-hopper-medium-v0"):
        load_dataset("hopper-medium-v2")


def _assert_refused(path: Path, match: str, task: str | None = "bullet-hopper-medium-v0") -> None:
    with pytest.raises(DatasetError) as ei:
        load_dataset(str(path), task=task)
    msg = str(ei.value)
    assert str(path) in msg, msg
    assert "\n" not in msg, msg
    assert match in msg, msg


def test_refuses_truncated_file(tmp_path: Path, small_dataset_path: Path) -> None:
    data = small_dataset_path.read_bytes()
    bad = tmp_path / "truncated.hdf5"
    bad.write_bytes(data[: len(data) // 2])
    _assert_refused(bad, "corrupt")


def test_refuses_not_hdf5(tmp_path: Path) -> None:
    bad = tmp_path / "text.hdf5"
    bad.write_text("this is not hdf5\n")
    _assert_refused(bad, "corrupt")


def test_refuses_missing_file(tmp_path: Path) -> None:
    _assert_refused(tmp_path / "nope.hdf5", "does not exist")


def test_refuses_missing_key(tmp_path: Path) -> None:
    arr = _hand_arrays()
    del arr["rewards"]
    _assert_refused(_write_plain(tmp_path / "nokey.hdf5", arr), "no key 'rewards'")


def test_refuses_nan(tmp_path: Path) -> None:
    arr = _hand_arrays()
    arr["observations"][4, 2] = np.nan
    _assert_refused(_write_plain(tmp_path / "nan.hdf5", arr), "NaN or inf (first at row 4)")
    arr = _hand_arrays()
    arr["rewards"][1] = np.inf
    _assert_refused(_write_plain(tmp_path / "inf.hdf5", arr), "'rewards' contains NaN or inf")


def test_refuses_flags_that_are_not_0_or_1(tmp_path: Path) -> None:
    """A terminal of 0.5, 2 or NaN would go straight into the critic's TD target."""
    for i, bad in enumerate((0.5, 2.0, np.nan)):
        arr = _hand_arrays()
        arr["terminals"] = arr["terminals"].astype(np.float32)
        arr["terminals"][3] = bad
        _assert_refused(_write_plain(tmp_path / f"term{i}.hdf5", arr), "'terminals' holds")
    arr = _hand_arrays()
    arr["timeouts"] = np.array([b"0"] * 7)
    _assert_refused(_write_plain(tmp_path / "str.hdf5", arr), "'timeouts' has dtype")


def test_refuses_scalars_complex_and_float32_overflow(tmp_path: Path) -> None:
    arr = _hand_arrays()
    arr["rewards"] = np.float32(1.0)
    _assert_refused(_write_plain(tmp_path / "scalar.hdf5", arr), "'rewards' is a single value")
    arr = _hand_arrays()
    arr["rewards"] = arr["rewards"].astype(np.complex64)
    _assert_refused(_write_plain(tmp_path / "complex.hdf5", arr), "not real numbers")
    arr = _hand_arrays()
    arr["observations"] = arr["observations"].astype(np.float64)
    arr["observations"][5, 0] = 1e300
    _assert_refused(_write_plain(tmp_path / "big.hdf5", arr), "beyond float32 (first at row 5)")


def test_refuses_wrong_dims(tmp_path: Path) -> None:
    path = _write_plain(tmp_path / "dims.hdf5", _hand_arrays())
    _assert_refused(path, "needs (N, 28)", task="bullet-ant-medium-v0")  # hopper data, ant task
    arr = _hand_arrays()
    arr["actions"] = arr["actions"][:, :2]
    _assert_refused(_write_plain(tmp_path / "act.hdf5", arr), "needs (N, 3)")


def test_refuses_mismatched_lengths(tmp_path: Path) -> None:
    arr = _hand_arrays()
    arr["terminals"] = arr["terminals"][:5]
    _assert_refused(_write_plain(tmp_path / "len.hdf5", arr), "'terminals' has 5 rows")


def test_refuses_unknown_task(tmp_path: Path) -> None:
    path = _write_plain(tmp_path / "anon.hdf5", _hand_arrays())
    _assert_refused(path, "cannot tell which task", task=None)


def test_write_roundtrip_atomic(tmp_path: Path) -> None:
    arr = _hand_arrays()
    out = tmp_path / "sub" / "w.hdf5"
    write_d4rl_file(out, arr["observations"], arr["actions"], arr["rewards"], arr["terminals"], arr["timeouts"],
                    {"task": "bullet-hopper-random-v0", "recipe": {"sigma": 0.3}, "seed": 3},
                    next_observations=arr["observations"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["w.hdf5"]  # no temp file left
    ds = load_dataset(str(out))
    assert ds.name == "bullet-hopper-random-v0"
    assert ds.attrs["recipe"] == {"sigma": 0.3} and ds.attrs["seed"] == 3
    with h5py.File(out) as f:
        assert f["terminals"].dtype == bool and f["observations"].dtype == np.float32
        assert "next_observations" in f


def test_small_dataset_fixture(small_dataset_path: Path) -> None:
    ds = load_dataset(str(small_dataset_path))
    assert ds.name == "bullet-hopper-medium-v0"
    assert 4900 <= len(ds) < 5000 and ds.obs_dim == 15 and ds.act_dim == 3
    assert ds.attrs["command"] == "modzoo data collect bullet-hopper-medium-v0 --transitions 5000 --seed 0"
    assert ds.attrs["transitions"] == 5000
    rets = ds.episode_returns()
    assert len(rets) == ds.attrs["episodes"]
    assert rets.mean() == pytest.approx(ds.attrs["mean_return"], rel=1e-5)
    assert np.abs(ds.actions).max() <= 1.0
    assert ds.terminals.sum() >= 1  # noisy hopper falls sometimes


def test_collect_is_deterministic(tmp_path: Path) -> None:
    a = collect("bullet-ant-random-v0", transitions=600, seed=5, out=tmp_path / "a.hdf5", progress=False)
    b = collect("bullet-ant-random-v0", transitions=600, seed=5, out=tmp_path / "b.hdf5", progress=False)
    c = collect("bullet-ant-random-v0", transitions=600, seed=6, out=tmp_path / "c.hdf5", progress=False)
    fa, fb, fc = (load_dataset(str(r.path)).fingerprint for r in (a, b, c))
    assert fa == fb != fc
    with h5py.File(a.path) as f:
        assert f["timeouts"][-1]  # the cut last episode is marked as a timeout
        # stored next_observations are the env's true successors, equal to obs[i+1] within an episode
        ends = f["terminals"][:] | f["timeouts"][:]
        inside = np.flatnonzero(~ends[:-1])
        np.testing.assert_array_equal(f["next_observations"][:][inside], f["observations"][:][inside + 1])


def test_plans_follow_d4rl_levels() -> None:
    assert DEFAULT_TRANSITIONS["medium-expert"] == 2 * DEFAULT_TRANSITIONS["medium"]
    me = plan("bullet-hopper-medium-expert-v0", 1001)
    assert [s.label for s in me] == ["medium", "expert"] and sum(s.transitions for s in me) == 1001
    rp = plan("bullet-ant-medium-replay-v0", 100)
    assert rp[0].sigma_start > rp[0].sigma_end
    assert plan("bullet-hopper-random-v0", 10)[0].policy is None
    with pytest.raises(DatasetError):
        plan("bullet-hopper-random-v0", 1)


def test_medium_expert_is_medium_plus_expert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D4RL's definition, bit for bit: simulated medium-expert == cached medium + cached expert."""
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "cache"))
    sim = collect("bullet-hopper-medium-expert-v0", transitions=600, seed=1, out=tmp_path / "sim.hdf5", progress=False,
                  reuse=False)
    collect("bullet-hopper-medium-v0", transitions=300, seed=1, progress=False)
    collect("bullet-hopper-expert-v0", transitions=300, seed=1, progress=False)
    re = collect("bullet-hopper-medium-expert-v0", transitions=600, seed=1, out=tmp_path / "re.hdf5", progress=False)
    assert [s["source"] for s in sim.attrs["segments"]] == ["simulated", "simulated"]
    assert all(s["source"].startswith("reused") for s in re.attrs["segments"])
    with h5py.File(sim.path) as a, h5py.File(re.path) as b:
        for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
            np.testing.assert_array_equal(a[k][()], b[k][()])


def test_medium_replay_from_training_run(tmp_path: Path) -> None:
    """--from-run writes SAC's saved transitions up to the medium snapshot; episodes cut by a resume
    (successor != next row) and by the end become timeouts, true terminals stay terminals."""
    import json

    from modzoo.bullet.collect import collect_replay_from_run

    run = tmp_path / "run"
    (run / "replay").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"seed": 4}))
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((9, OBS)).astype(np.float32)
    nxt = np.roll(obs, -1, axis=0)
    nxt[3] = 99.0  # resume after row 3: the env was reset, row 4 starts a fresh episode
    dones = np.zeros(9, np.float32)
    dones[1] = 1.0  # a real terminal
    for lo, hi, step in ((0, 5, 5), (5, 9, 9)):
        np.savez(run / "replay" / f"chunk_{step}.npz", observations=obs[lo:hi],
                 actions=np.zeros((hi - lo, ACT), np.float32), rewards=np.ones(hi - lo, np.float32),
                 next_observations=nxt[lo:hi], dones=dones[lo:hi], timeouts=np.zeros(hi - lo, np.float32))
    (run / "progress.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "eval_mean": m, "snapshot": f"step_{s}.pt"})
                  for s, m in ((5, 1000.0), (9, 2000.0))) + "\n")
    # medium ~1078 -> step 5
    res = collect_replay_from_run("bullet-hopper-medium-replay-v0", run, out=tmp_path / "r.hdf5")
    with h5py.File(res.path) as f:
        np.testing.assert_array_equal(f["terminals"][()], [0, 1, 0, 0, 0])
        np.testing.assert_array_equal(f["timeouts"][()], [0, 0, 0, 1, 1])
    assert res.attrs["seed"] == 4 and "--upto-step 5" in res.attrs["command"]
    np.testing.assert_allclose(load_dataset(str(res.path)).episode_returns(), [2, 2, 1])


def _cli(*argv: str) -> int:
    import argparse

    from modzoo.cli.data import add_data_commands

    parser = argparse.ArgumentParser(prog="modzoo")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_cli_collect_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.hdf5"
    assert _cli("data", "collect", "bullet-walker2d-random-v0", "--transitions", "300", "--seed", "2",
                "--out", str(out), "--no-progress") == 0
    assert "300 transitions" in capsys.readouterr().out
    assert _cli("data", "info", str(out), "--json") == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["task"] == "bullet-walker2d-random-v0" and info["obs_dim"] == 22 and info["act_dim"] == 6
    assert info["recipe"]["command"] == "modzoo data collect bullet-walker2d-random-v0 --transitions 300 --seed 2"
    assert _cli("data", "info", str(out)) == 0
    shown = capsys.readouterr().out
    assert "normalized score" in shown
    # the recipe: behaviour policy, noise, size and the data's own score, one row each
    for label in ("behaviour policy", "action noise", "size", "data's own score"):
        assert f"segment random: {label}" in shown, label


def test_info_recipe_rows_say_policy_own_score_noise_size_and_the_datas_score() -> None:
    from modzoo.cli.data import recipe_rows

    medium = {"label": "medium", "policy": "pybullet enjoy_TF_HopperBulletEnv_v0_2017may expert", "transitions":
              1_000_000, "noise": "gaussian, clipped to [-1, 1]", "sigma_start": 0.3, "sigma_end": 0.3,
              "episodes": 2178, "mean_return": 1032.2, "std_return": 649.8}
    rows = dict(recipe_rows("bullet-hopper-medium-v0", [medium]))
    assert rows["segment medium: behaviour policy"] == "pybullet enjoy_TF_HopperBulletEnv_v0_2017may expert"
    assert "not recorded for pybullet's bundled experts" in rows["segment medium: its own score"]
    assert rows["segment medium: action noise"] == "gaussian, clipped to [-1, 1], sigma 0.3"
    assert rows["segment medium: size"] == "1,000,000 steps, 2178 episodes"
    # hopper's D4RL references 20.058972 and 1441.805962: 100 (1032.2 - 20.06) / 1421.75 = 71.2, 100 x 649.8 /
    # 1421.75 = 45.7 (a spread is scaled, not shifted)
    assert rows["segment medium: data's own score"] == "return 1032.2 ± 649.8, normalized 71.2 ± 45.7"
    ladder = dict(medium, label="medium-replay", sigma_start=1.0)
    assert (dict(recipe_rows("bullet-hopper-medium-replay-v0", [ladder]))["segment medium-replay: action noise"]
            == "gaussian, clipped to [-1, 1], sigma 1.0 falling to 0.3 across the segment")
    replay = {"label": "medium-replay", "policy": "SB3 SAC replay buffer of runs/x up to step 120000",
              "transitions": 120_000, "noise": "SAC's own exploration (gSDE)", "sigma_start": None,
              "sigma_end": None, "episodes": 1315, "mean_return": 108.5, "snapshot_eval_return": 1311.2}
    rows = dict(recipe_rows("bullet-walker2d-medium-replay-v0", [replay]))
    assert rows["segment medium-replay: action noise"] == "SAC's own exploration (gSDE)"
    assert rows["segment medium-replay: its own score"].startswith("return 1311.2 at that step")
    assert rows["segment medium-replay: data's own score"] == "return 108.5 (spread not recorded)"
    assert dict(recipe_rows("bullet-hopper-random-v0", [dict(medium, sigma_start=0.0, sigma_end=0.0)]))[
        "segment medium: action noise"] == "none"
    assert recipe_rows("bullet-hopper-medium-v0", None)[0][1].startswith("not recorded in this file")


def test_cli_fetch_without_network_fails_fast(tmp_path: Path) -> None:
    import time

    t0 = time.time()
    with pytest.raises(DatasetError, match="modzoo data collect bullet-hopper-medium-v0") as ei:
        _cli("data", "fetch", "bullet-hopper-medium-v0", "--out", str(tmp_path / "f.hdf5"), "--timeout", "2",
             "--url", "http://127.0.0.1:9/bullet-hopper_medium.hdf5")
    assert time.time() - t0 < 5 and "\n" not in str(ei.value)
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_cli_fetch_validates_download(tmp_path: Path, small_dataset_path: Path) -> None:
    """A (local) download is hashed, validated as the named task, and renamed into place."""
    out = tmp_path / "got.hdf5"
    assert _cli("data", "fetch", "bullet-hopper-medium-v0", "--out", str(out),
                "--url", small_dataset_path.as_uri()) == 0
    assert load_dataset(str(out)).fingerprint == load_dataset(str(small_dataset_path)).fingerprint
    bad = tmp_path / "bad.hdf5"
    bad.write_text("<html>not found</html>")
    with pytest.raises(DatasetError, match="corrupt"):
        _cli("data", "fetch", "bullet-hopper-medium-v0", "--out", str(tmp_path / "x.hdf5"), "--url", bad.as_uri())
    assert not (tmp_path / "x.hdf5").exists()


def test_cli_fetch_checks_length_checksum_and_never_overwrites(tmp_path: Path, small_dataset_path: Path) -> None:
    """A download cut short, or with another sha256 than asked for, leaves nothing; an existing file is replaced
    only with --force; a good download keeps its sha256 beside it."""
    import hashlib
    import http.server
    import threading

    body = small_dataset_path.read_bytes()

    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])  # then the connection closes

        def log_message(self, *a: object) -> None:
            pass
    srv = http.server.HTTPServer(("127.0.0.1", 0), Short)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DatasetError, match="broke off|incomplete"):
            _cli("data", "fetch", "bullet-hopper-medium-v0", "--out", str(tmp_path / "short.hdf5"), "--url",
                 f"http://127.0.0.1:{srv.server_port}/f.hdf5")
    finally:
        srv.shutdown()
    assert not (tmp_path / "short.hdf5").exists()
    with pytest.raises(DatasetError, match="not the expected"):
        _cli("data", "fetch", "bullet-hopper-medium-v0", "--out", str(tmp_path / "sum.hdf5"), "--url",
             small_dataset_path.as_uri(), "--sha256", "0" * 64)
    assert not (tmp_path / "sum.hdf5").exists()
    out = tmp_path / "ok.hdf5"
    digest = hashlib.sha256(body).hexdigest()
    assert _cli("data", "fetch", "bullet-hopper-medium-v0", "--out", str(out), "--url", small_dataset_path.as_uri(),
                "--sha256", digest) == 0
    assert (tmp_path / "ok.hdf5.sha256").read_text().split()[0] == digest
    before = out.read_bytes()
    with pytest.raises(DatasetError, match="already exists; pass --force"):
        _cli("data", "fetch", "bullet-hopper-medium-v0", "--out", str(out), "--url", small_dataset_path.as_uri())
    with pytest.raises(DatasetError, match="already exists; pass --force"):
        _cli("data", "collect", "bullet-hopper-random-v0", "--transitions", "50", "--out", str(out), "--no-progress")
    assert out.read_bytes() == before
    assert _cli("data", "collect", "bullet-hopper-random-v0", "--transitions", "50", "--out", str(out),
                "--no-progress", "--force") == 0
    assert out.read_bytes() != before
