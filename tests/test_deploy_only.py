"""The deploy-only install: a fresh virtual environment with `pip install .[cpu]` and nothing else (no torch, no
onnx) runs cirn-run on an exported toy model and writes the same label maps as the full install. CI runs it; it
needs the package registry (pip installs numpy, OpenCV, Pillow, click, tqdm and onnxruntime into the venv)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(args, **kwargs):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kwargs)


@pytest.fixture(scope="session")
def deploy_venv(tmp_path_factory):
    """bin/ of a fresh venv holding `cirn[cpu]`, built from this checkout (not editable: what a user installs)."""
    work = tmp_path_factory.mktemp("deploy")
    source, env = work / "src", work / "venv"
    # A copy of the sources: pip builds in the source tree, and a build/ left in the checkout would go stale.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "runs", "__pycache__",
                                                                 ".pytest_cache", "benchmarks", "tests", "docs"))
    made = _run([sys.executable, "-m", "venv", env])
    assert made.returncode == 0, made.stderr
    installed = _run([env / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
                      f"{source}[cpu]"], cwd=work)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return env / "bin"


def test_deploy_only_install_has_no_training_stack(deploy_venv):
    for module in ("torch", "onnx", "torchvision"):
        probe = _run([deploy_venv / "python", "-c", f"import {module}"])
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, f"{module} is importable"
    trained = _run([deploy_venv / "cirn-train", "source-only"])
    assert trained.returncode == 2 and trained.stderr.startswith("error: ") and "cirn[train]" in trained.stderr
    assert len(trained.stderr.strip().splitlines()) == 1


def test_cirn_run_without_torch_writes_the_full_installs_labels(deploy_venv, onnx_static, toy_data, tmp_path):
    images = toy_data / "cityscapes" / "leftImg8bit" / "val"
    lean, full = tmp_path / "lean", tmp_path / "full"
    ran = _run([deploy_venv / "cirn-run", images, "--model", onnx_static, "--labels-dir", lean, "--quiet"],
               cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    reference = _run([sys.executable, "-c", "from cirn.cli import run_main; run_main()", images, "--model",
                      onnx_static, "--labels-dir", full, "--quiet"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    lean_files = sorted(p.relative_to(lean) for p in lean.rglob("*.png"))
    assert lean_files and lean_files == sorted(p.relative_to(full) for p in full.rglob("*.png"))
    assert all((lean / f).read_bytes() == (full / f).read_bytes() for f in lean_files)


def test_a_checkpoint_without_torch_says_what_to_install(deploy_venv, checkpoint, toy_data, tmp_path):
    images = toy_data / "cityscapes" / "leftImg8bit" / "val"
    ran = _run([deploy_venv / "cirn-run", images, "--model", checkpoint, "--labels-dir", tmp_path / "out"])
    assert ran.returncode == 2 and "error: " in ran.stderr and "cirn[train]" in ran.stderr
    assert not (tmp_path / "out").exists()
