"""Training on a GPU without one here: what the loops do differently on CUDA (bf16 autocast by default, cuDNN's
autotuner, channels-last models, page-locked batches), faked where the hardware is missing, and the loop's one host
sync per log step, counted on the CPU."""
import types

import torch

from cirn.train import engine, stage2
from cirn.train.config import load_config


def test_amp_auto_is_bf16_where_the_hardware_has_it_and_fp32_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: False)
    assert engine.resolve_amp(torch.device("cpu"), "auto") == "none"
    assert engine.resolve_amp(torch.device("cpu"), "bf16") == "bf16"
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: True)
    assert engine.resolve_amp(torch.device("cpu"), "auto") == "bf16"
    assert engine.resolve_amp(torch.device("cpu"), "none") == "none"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert engine.resolve_amp(torch.device("cuda"), "auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert engine.resolve_amp(torch.device("cuda"), "auto") == "none"
    assert load_config("toy").run.amp == "auto"


def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n")
    assert not engine.cpu_has_bf16(info)  # AVX-512 alone: oneDNN would emulate bf16
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert engine.cpu_has_bf16(info)
    info.write_text("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert engine.cpu_has_bf16(info)
    assert not engine.cpu_has_bf16(tmp_path / "missing")


def test_paper_presets_feed_the_gpu():
    for preset in ("paper", "paper-synthia"):
        cfg = load_config(preset)
        assert cfg.data.num_workers >= 2 and cfg.run.amp == "auto"


def test_cuda_device_turns_on_cudnn_autotuning_and_channels_last(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert engine.resolve_device("cuda").type == "cuda" and torch.backends.cudnn.benchmark
    calls = []
    module = types.SimpleNamespace(to=lambda *args, **kwargs: calls.append((args, kwargs)) or module)
    engine.on_device(module, torch.device("cuda"))
    assert calls == [((torch.device("cuda"),), {}), ((), {"memory_format": torch.channels_last})]
    calls.clear()
    engine.on_device(module, torch.device("cpu"))
    assert calls == [((torch.device("cpu"),), {})]  # the CPU keeps the default layout (engine.on_device says why)


def test_losses_are_read_once_per_log_step_not_every_step(toy_data, tmp_path, monkeypatch):
    cfg = load_config("smoke", overrides=[
        f"data.source_root={toy_data / 'gta5'}", f"data.target_root={toy_data / 'cityscapes'}", "run.iterations=6",
        "run.log_every=3", "run.eval_every=6", "run.checkpoint_every=6"])
    reads, returned = [], []
    real_read, real_step = engine.loss_values, stage2.train_step

    def read(losses):
        reads.append(sorted(losses))
        return real_read(losses)

    def step(*args, **kwargs):
        losses = real_step(*args, **kwargs)
        returned.append(all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in losses.values()))
        return losses

    monkeypatch.setattr(engine, "loss_values", read)
    monkeypatch.setattr(stage2, "train_step", step)
    stage2.run(cfg, tmp_path / "run", quiet=True)
    assert len(returned) == 6 and all(returned)  # the step hands back tensors: no .item() sync inside
    assert len(reads) == 2 and "loss_seg_src" in reads[0]  # iterations 3 and 6 (6: log, eval and checkpoint)


class _Stop(Exception):
    pass


def test_batches_are_page_locked_for_a_cuda_run(toy_data, tmp_path, monkeypatch):
    """On CUDA the loaders pin their batches (so the non_blocking copies overlap the GPU's work); faked: the run
    stops at its first loader, having asked for it."""
    cfg = load_config("smoke", overrides=[f"data.source_root={toy_data / 'gta5'}",
                                          f"data.target_root={toy_data / 'cityscapes'}"])
    asked = []

    def loader(*args, pin_memory=False, **kwargs):
        asked.append(pin_memory)
        raise _Stop

    monkeypatch.setattr(stage2, "infinite_loader", loader)
    monkeypatch.setattr(stage2, "on_device", lambda module, device: module)
    for device, expected in ((torch.device("cuda"), True), (torch.device("cpu"), False)):
        monkeypatch.setattr(stage2, "resolve_device", lambda spec, device=device: device)
        try:
            stage2.run(cfg, tmp_path / device.type, quiet=True)
        except _Stop:
            pass
        assert asked.pop() is expected
