"""Checkpoints: round trip, weights-only loading, and every way a bad one is refused."""
import warnings

import pytest
import torch

import modzoo
from modzoo.errors import CheckpointError
from modzoo.run.checkpoint import check_guidance_fits, load_checkpoint, save_half


def test_round_trip_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    g = modzoo.make_guidance("idql", 5, 2, hidden=[16, 16])
    p = modzoo.make_policy("dql", 5, 2, hidden=16)
    save_half(g, tmp_path / "g.pt", {"name": "x", "fingerprint": "abc"})
    save_half(p, tmp_path / "p.pt")
    g2 = load_checkpoint(tmp_path / "g.pt", kind="guidance")
    p2 = load_checkpoint(tmp_path / "p.pt", kind="policy")
    obs, act = torch.randn(7, 5), torch.rand(7, 2)
    torch.testing.assert_close(g.q(obs, act), g2.q(obs, act))
    torch.testing.assert_close(g.v(obs), g2.v(obs))
    eps = p.diffusion.model(act, torch.zeros(7, dtype=torch.long), obs)
    torch.testing.assert_close(eps, p2.diffusion.model(act, torch.zeros(7, dtype=torch.long), obs))
    assert g2.dataset_meta["fingerprint"] == "abc"
    # the file is loadable with weights_only=True: no pickled code inside
    payload = torch.load(tmp_path / "g.pt", weights_only=True)
    assert payload["algorithm"] == "idql" and payload["obs_dim"] == 5


def test_optimizer_state_survives(tmp_path):
    g = modzoo.make_guidance("dql", 3, 1, hidden=[8])
    b = {"observations": torch.randn(4, 3), "actions": torch.zeros(4, 1), "rewards": torch.ones(4),
         "next_observations": torch.randn(4, 3), "terminals": torch.zeros(4), "next_actions": torch.zeros(4, 1)}
    g.cfg["target_actions"] = "dataset"
    g.mode = "dataset"
    g.update(b)
    save_half(g, tmp_path / "g.pt")
    g2 = load_checkpoint(tmp_path / "g.pt")
    assert g2.steps == 1
    s1, s2 = g.q_opt.state_dict()["state"], g2.q_opt.state_dict()["state"]
    torch.testing.assert_close(s1[0]["exp_avg"], s2[0]["exp_avg"])


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_file_is_refused_clearly(tmp_path, content):
    bad = tmp_path / "guidance.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or not a modzoo checkpoint"):
        load_checkpoint(bad)


@pytest.mark.parametrize("kept", [0.1, 0.5, 0.9])
def test_a_truncated_checkpoint_is_one_complete_sentence_naming_the_file_and_the_fix(tmp_path, kept):
    """torch's own message for a cut file runs to four sentences, and quoting it whole or cut at a length left the
    user's line ending mid-sentence ("... there is a high)")."""
    g = modzoo.make_guidance("idql", 5, 2, hidden=[8])
    save_half(g, tmp_path / "g.pt")
    data = (tmp_path / "g.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "t.pt")
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {tmp_path / 't.pt'} is truncated: ") and "\n" not in msg
    assert msg.endswith("copy it again from where it came from, or re-create it by training again "
                        "(modzoo train-guidance / modzoo run)")


def test_an_unreadable_checkpoint_quotes_whole_sentences_of_the_reason(tmp_path, monkeypatch):
    (tmp_path / "x.pt").write_bytes(b"PK\x03\x04garbage")
    reason = "The reader failed at offset 12. " + "This is a long explanation of why, " * 10 + "and more."
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(RuntimeError(reason)))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "x.pt")
    assert "(RuntimeError: The reader failed at offset 12); re-create it by training again" in str(e.value)
    from modzoo.run.checkpoint import _first_line
    assert _first_line(RuntimeError("word " * 50), 30) == "word word word word word word ..."


def test_foreign_torch_file_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a modzoo half checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_missing_and_wrong_kind(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    save_half(modzoo.make_guidance("idql", 5, 2, hidden=[8]), tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="holds a guidance"):
        load_checkpoint(tmp_path / "g.pt", kind="policy")
    # a run dir given where its checkpoint goes: one line naming the file inside (was an IsADirectoryError)
    (tmp_path / "run").mkdir()
    (tmp_path / "g.pt").rename(tmp_path / "run" / "guidance.pt")
    with pytest.raises(CheckpointError, match=f"is a folder, not a file; pass {tmp_path / 'run' / 'guidance.pt'}$"):
        load_checkpoint(tmp_path / "run")


def test_dims_mismatch_refused_and_dataset_mismatch_warned():
    g = modzoo.make_guidance("idql", 5, 2, hidden=[8])
    with pytest.raises(CheckpointError, match="5/2.*15/3"):
        check_guidance_fits(g, 15, 3)
    g.dataset_meta = {"name": "bullet-hopper-medium-v0", "fingerprint": "aaa"}
    with pytest.warns(UserWarning, match="same data distribution"):
        check_guidance_fits(g, 5, 2, "bbb", "bullet-hopper-expert-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_guidance_fits(g, 5, 2, "aaa", "bullet-hopper-medium-v0")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    g = modzoo.make_guidance("idql", 5, 2, hidden=[8])
    save_half(g, tmp_path / "g.pt")
    before = (tmp_path / "g.pt").read_bytes()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError):
        save_half(g, tmp_path / "g.pt")
    assert (tmp_path / "g.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.pt"]


def test_a_checkpoint_from_before_a_key_existed_loads_with_its_old_behaviour(tmp_path):
    """Halves read ``cfg[key]``; a checkpoint written before a key was added lacks it and must still load, with
    the value that reproduces how it was trained (``config.ADDED_KEYS``), else the YAML default."""
    p = modzoo.make_policy("dql", 11, 3, hidden=16, act_temperature=0.5, ema_decay=0.9)
    path = save_half(p, tmp_path / "policy.pt")
    payload = torch.load(path, weights_only=True)
    del payload["config"]["act_temperature"], payload["config"]["obs_norm"], payload["config"]["tau"]
    torch.save(payload, path)
    q = load_checkpoint(path)
    assert q.cfg["act_temperature"] == 1.0 and q.cfg["obs_norm"] == "none"  # the behaviour before the key existed
    assert q.cfg["tau"] == modzoo.make_policy("dql", 11, 3).cfg["tau"]  # not an added key: the plugin default
    assert q.cfg["ema_decay"] == 0.9 and q.cfg["hidden"] == 16  # what the checkpoint holds always wins
