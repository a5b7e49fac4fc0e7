import collections

import pytest
import torch

from cirn.common.errors import CirnError
from cirn.train.checkpoint import (load_checkpoint, load_model, load_resume_state, model_meta, network_of,
                                   save_checkpoint)
from cirn.train.config import load_config
from cirn.train.models import build_model
from cirn.train.models.cyclegan import build_cyclegan

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


def test_model_meta_names_the_network_and_load_model_refuses_a_cyclegan(tmp_path):
    cfg = load_config("smoke")
    nets = build_cyclegan(cfg.stage1)
    meta = model_meta(nets, cfg)
    assert meta == {"network": "cyclegan", "ngf": cfg.stage1.ngf, "ndf": cfg.stage1.ndf,
                    "n_blocks": cfg.stage1.n_blocks, "upsample": "deconv", "disc_layers": 3, "normalization": "tanh"}
    assert model_meta(build_model(cfg.model), cfg)["network"] == "segnet"
    # Stage-1 checkpoints written before model_meta named the network carry the segmentation model's keys and
    # the generators' 'tanh' normalisation.
    old = {"name": "tiny", "num_classes": 3, "num_attention": 2, "width": 4, "normalization": "tanh"}
    assert network_of(old) == "cyclegan" and network_of({**old, "normalization": "imagenet"}) == "segnet"
    for i, stamp in enumerate((meta, old)):
        path = tmp_path / f"last{i}.pt"
        save_checkpoint(path, {"kind": "training", "model_meta": stamp, "states": {"model": nets.state_dict()}})
        with pytest.raises(CirnError, match="stage-1 CycleGAN checkpoint, not a segmentation model"):
            load_model(path)


def test_rng_state_holds_the_run_device_only(monkeypatch):
    """A CUDA run saves its own GPU's generator, not one per visible GPU, and restores it onto the device it resumes
    on (fewer GPUs, another rank): no IndexError, no other GPU touched. Faked: this machine has no GPU."""
    import torch

    from cirn.train.checkpoint import rng_state, set_rng_state
    saved, restored = torch.arange(4, dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved + torch.device(device).index)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    state = rng_state(torch.device("cuda", 3))
    assert torch.equal(state["cuda"], saved + 3) and "cuda" not in rng_state("cpu")
    set_rng_state(state, torch.device("cuda", 0))
    assert len(restored) == 1 and torch.equal(restored[0][0], saved + 3) and restored[0][1] == torch.device("cuda", 0)
    set_rng_state({**state, "cuda": [saved, saved]}, torch.device("cuda", 0))  # an older file: a list per GPU
    set_rng_state(state, "cpu")
    assert len(restored) == 1
