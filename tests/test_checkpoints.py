import collections

import pytest
import torch

from cirn.train.engine import load_checkpoint, load_resume_state, save_checkpoint
from cirn.common.errors import CirnError

Payload = collections.namedtuple("Payload", "a b")  # any non-tensor class makes torch.save pickle code references


def test_round_trip_and_marker(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"kind": "model", "model": {"w": torch.ones(2)}})
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["format"] == "cirn-checkpoint" and torch.equal(state["model"]["w"], torch.ones(2))
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(CirnError, match="not a cirn checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")


def test_pickled_payload_is_refused(tmp_path):
    torch.save({"format": "cirn-checkpoint", "payload": Payload(1, 2)}, tmp_path / "evil.pt")
    with pytest.raises(CirnError, match="pickled"):
        load_checkpoint(tmp_path / "evil.pt")


def test_truncated_last_falls_back_to_previous(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints"
    save_checkpoint(ckpt / "last.pt", {"kind": "training", "iteration": 2})
    save_checkpoint(ckpt / "last.pt", {"kind": "training", "iteration": 4})  # the first becomes prev.pt
    assert load_checkpoint(ckpt / "prev.pt")["iteration"] == 2
    data = (ckpt / "last.pt").read_bytes()
    (ckpt / "last.pt").write_bytes(data[: len(data) // 2])
    assert load_resume_state(tmp_path)["iteration"] == 2
    assert "previous checkpoint" in capsys.readouterr().err


def test_no_checkpoint_to_resume(tmp_path):
    with pytest.raises(CirnError, match="without --resume"):
        load_resume_state(tmp_path)
