"""Minari datasets as a task source: load, train, evaluate on the recorded env, mix halves, export, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

minari = pytest.importorskip("minari")
gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

import modzoo  # noqa: E402
from modzoo.bullet import minari_data  # noqa: E402
from modzoo.bullet.data import export_minari, load_dataset  # noqa: E402
from modzoo.bullet.scores import REF_MAX_SCORE  # noqa: E402
from modzoo.bullet.tasks import task_of  # noqa: E402
from modzoo.errors import CheckpointError, DatasetError  # noqa: E402

TINY = ["guidance.hidden=[16,16]", "guidance.batch_size=32", "policy.hidden=16", "policy.batch_size=32"]


@pytest.fixture
def minari_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(d))
    return d


def _collect(dataset_id: str, episodes: int = 6, eval_env: str = "Hopper-v5", refs: bool = True) -> None:
    """A few random-action episodes of gymnasium's MuJoCo Hopper-v5, written by Minari's own collector."""
    env = minari.DataCollector(gym.make("Hopper-v5"), record_infos=False)
    for ep in range(episodes):
        env.reset(seed=ep)
        while True:
            *_, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                break
    kw = {"ref_min_score": -20.0, "ref_max_score": 3234.3} if refs else {}
    env.create_dataset(dataset_id=dataset_id, algorithm_name="random", eval_env=eval_env, **kw)
    env.close()


def test_a_minari_dataset_trains_and_evaluates_on_its_recorded_env(minari_dir: Path, tmp_path: Path) -> None:
    _collect("test/hopper/random-v0")
    ds = load_dataset("test/hopper/random-v0")
    src = minari.load_dataset("test/hopper/random-v0")
    n_steps = sum(len(e.actions) for e in src.iterate_episodes())
    assert len(ds) == n_steps and (ds.obs_dim, ds.act_dim) == (11, 3)
    # terminations are terminals, truncations are not
    assert ds.terminals.sum() == sum(bool(e.terminations[-1]) for e in src.iterate_episodes())
    np.testing.assert_allclose(ds.episode_returns(), [e.rewards.sum() for e in src.iterate_episodes()], rtol=1e-6)
    cfg = modzoo.run_config("idql", "idql", "test/hopper/random-v0", TINY, policy_steps=10, eval_episodes=2,
                            device="cpu", out=str(tmp_path / "run"), schedule="joint")
    result = modzoo.train(cfg, progress=False)
    # normalized with the dataset's own reference scores, on Hopper-v5 episodes
    assert result.eval.normalized_mean == pytest.approx(100 * (result.eval.mean + 20.0) / (3234.3 + 20.0))
    assert json.loads((tmp_path / "run" / "result.json").read_text())["dataset"]["name"] == "test/hopper/random-v0"
    # the report's `fell` column reads the evaluation env's own time limit
    assert task_of("test/hopper/random-v0").max_episode_steps == gym.spec("Hopper-v5").max_episode_steps == 1000


def test_a_guidance_trained_on_a_minari_task_guides_there_and_is_refused_elsewhere(
        minari_dir: Path, tmp_path: Path, small_dataset_path: Path) -> None:
    _collect("test/hopper/random-v0")
    _collect("test/hopper/other-v0", episodes=4)
    g = modzoo.run_config("idql", None, "test/hopper/random-v0", TINY[:2], guidance_steps=10, device="cpu",
                          out=str(tmp_path / "g"), schedule="guidance-first")
    modzoo.train(g, progress=False)
    ok = modzoo.run_config("idql", "bc", "test/hopper/random-v0", TINY, policy_steps=5, eval_episodes=1,
                           device="cpu", out=str(tmp_path / "p"), schedule="pretrained",
                           guidance_ckpt=str(tmp_path / "g" / "guidance.pt"))
    modzoo.train(ok, progress=False)
    other = modzoo.run_config("idql", "bc", "test/hopper/other-v0", TINY, policy_steps=5, eval_episodes=1,
                              device="cpu", out=str(tmp_path / "q"), schedule="pretrained",
                              guidance_ckpt=str(tmp_path / "g" / "guidance.pt"))
    with pytest.warns(UserWarning, match="trained on dataset 'test/hopper/random-v0'"):  # same env, other data
        modzoo.train(other, progress=False)
    bullet = modzoo.run_config("idql", "bc", "bullet-hopper-medium-v0", TINY, policy_steps=5, eval_episodes=1,
                               device="cpu", out=str(tmp_path / "b"), schedule="pretrained",
                               dataset=str(small_dataset_path), guidance_ckpt=str(tmp_path / "g" / "guidance.pt"))
    with pytest.raises(CheckpointError, match="obs/act dims 11/3, but the policy has 15/3"):  # another task
        modzoo.train(bullet, progress=False)


def test_bad_minari_input_is_one_line(minari_dir: Path) -> None:
    with pytest.raises(DatasetError, match=r"Minari dataset 'test/nope/none-v0' is not in .*modzoo data fetch"):
        load_dataset("test/nope/none-v0")
    _collect("test/hopper/cheetah-eval-v0", episodes=2, eval_env="HalfCheetah-v5")  # Hopper data, HalfCheetah env
    with pytest.raises(DatasetError, match=r"dims 11/3 but its evaluation env HalfCheetah-v5 has 17/6"):
        load_dataset("test/hopper/cheetah-eval-v0")
    _collect("test/hopper/empty-v0", episodes=1)
    meta = minari_data.open_dataset("test/hopper/empty-v0").storage
    meta.update_metadata({"total_episodes": 0})
    with pytest.raises(DatasetError, match="'test/hopper/empty-v0' holds no episodes"):
        load_dataset("test/hopper/empty-v0")


def test_without_reference_scores_the_scores_are_raw_returns_and_it_says_so(minari_dir: Path) -> None:
    _collect("test/hopper/noref-v0", episodes=2, refs=False)
    from modzoo.bullet.scores import normalized_score

    with pytest.warns(UserWarning, match="no ref_min_score / ref_max_score"):
        assert normalized_score("test/hopper/noref-v0", 123.0) == 123.0


def test_a_bullet_dataset_exports_to_minari_and_reads_back(minari_dir: Path, small_dataset_path: Path) -> None:
    pytest.importorskip("h5py")
    dataset_id = export_minari("bullet-hopper-medium-v0", "modzoo/hopper/small-v0", small_dataset_path)
    src = load_dataset(small_dataset_path)
    back = minari.load_dataset(dataset_id)  # read by Minari itself, as d3rlpy or torchrl would
    assert back.spec.env_spec.id == "modzoo/bullet-hopper-v0"
    assert back.storage.metadata["ref_max_score"] == pytest.approx(REF_MAX_SCORE["bullet-hopper-medium-v0"])
    returns = [float(e.rewards.sum()) for e in back.iterate_episodes()]
    np.testing.assert_allclose(returns, src.episode_returns(), rtol=1e-5)
    ds = load_dataset(dataset_id)  # and by modzoo, evaluated on the Bullet env it names
    assert (ds.obs_dim, ds.act_dim) == (15, 3) and ds.terminals.sum() == src.terminals.sum()
    with pytest.raises(DatasetError, match="already exists"):
        export_minari("bullet-hopper-medium-v0", "modzoo/hopper/small-v0", small_dataset_path)


def test_cli_fetch_offline_and_export_say_what_happened(minari_dir: Path, small_dataset_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from modzoo.cli import main

    def offline(*a, **k):  # type: ignore[no-untyped-def]
        raise ConnectionError("Name or service not known")
    monkeypatch.setattr(minari, "download_dataset", offline)
    assert main(["data", "fetch", "mujoco/hopper/medium-v0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert (len(err) == 1 and "could not fetch Minari dataset 'mujoco/hopper/medium-v0'" in err[0]
            and "copy its folder into" in err[0])
    assert main(["data", "export-minari", "bullet-hopper-medium-v0", "--out", "modzoo/hopper/cli-v0", "--file",
                 str(small_dataset_path)]) == 0
    assert "wrote Minari dataset modzoo/hopper/cli-v0" in capsys.readouterr().out
    assert "modzoo/hopper/cli-v0" in minari.list_local_datasets()


def test_bullet_only_commands_refuse_a_minari_id_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from modzoo.cli import main

    assert main(["data", "collect", "mujoco/hopper/medium-v0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: modzoo data collect works on modzoo's Bullet tasks (bullet-<robot>-<level>-v0), not the "
                   "Minari dataset 'mujoco/hopper/medium-v0'"]
