import pytest


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """A small toy domain pair (GTA5-layout source, Cityscapes-layout target) shared by the training tests."""
    from cirn.train import toy
    root = tmp_path_factory.mktemp("toy")
    toy.generate(root, seed=0, num_source=8, num_train=8, num_val=4, workers=1)
    return root


@pytest.fixture
def toy_args(toy_data):
    """CLI options pointing a training command at the small toy pair."""
    return ["--source-root", str(toy_data / "gta5"), "--target-root", str(toy_data / "cityscapes")]


@pytest.fixture(scope="session")
def checkpoint(toy_data, tmp_path_factory):
    """best.pt of a 2-iteration smoke run, trained once per test session (tests must not change its folder's files;
    fixtures that export it write their own sub-folders)."""
    return train_smoke_checkpoint(toy_data, tmp_path_factory.mktemp("runs") / "smoke")


@pytest.fixture(scope="session")
def onnx_static(checkpoint):
    """A static 1 x 3 x 32 x 64 export of `checkpoint` (TorchScript exporter: quick)."""
    from cirn.export import export_checkpoint
    export_checkpoint(checkpoint, checkpoint.parent / "static", exporter="torchscript", parity_images=2)
    return checkpoint.parent / "static" / "model.onnx"


def train_smoke_checkpoint(toy_data, run_dir):
    """best.pt of a 2-iteration smoke run (tiny model, width 4, 64x32 target size) on the small toy pair."""
    from cirn.train import supervised
    from cirn.train.config import load_config
    cfg = load_config("smoke", overrides=[f"data.source_root={toy_data}/gta5",
                                          f"data.target_root={toy_data}/cityscapes"])
    supervised.run(cfg, run_dir, quiet=True)
    return run_dir / "best.pt"
