from pathlib import Path

from setuptools import setup

ROOTS = {"cirn": "cirn", "cirn.common": "common", "cirn.train": "train", "cirn.export": "export",
         "cirn.runtime": "runtime"}


def packages():
    """Every folder with an __init__.py under the four roots, named as installed (train/models -> cirn.train.models)."""
    found = []
    for name, folder in ROOTS.items():
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder)
            found.append(".".join([name, *rel.parts]) if rel.parts else name)
    return found


CPU = ["onnxruntime>=1.18"]
# Training and export: PyTorch (pinned to the builds the project's machines hold), ONNX, plots and logs.
TRAIN = [
    "torch>=2.4,<=2.14.1",
    "torchvision>=0.19,<=0.29.1",
    "pyyaml>=6",
    "matplotlib>=3.7",
    "tensorboard>=2.14",
    "onnx>=1.16",
    "onnxscript>=0.1",
]

setup(
    name="cirn",
    version="0.1.0",
    description="CIRN: unsupervised domain adaptation for semantic segmentation, from synthetic data to deployment",
    long_description=Path("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages(),
    package_dir=ROOTS,
    package_data={"cirn.train": ["presets/*.yaml"]},
    # The base install deploys: cirn-run on exported models needs numpy, OpenCV, Pillow and a backend extra only.
    install_requires=[
        "numpy>=1.24",
        "pillow>=10",
        "opencv-python-headless>=4.8",
        "click>=8.1",
        "tqdm>=4.66",
    ],
    extras_require={
        # ONNX Runtime comes in two mutually exclusive builds: pick `cpu` or `gpu`, never both installed at once
        # (onnxruntime next to onnxruntime-gpu hides the CUDA provider). README: "Switching to the GPU".
        "cpu": CPU,
        # TensorRT < 11: onnxruntime-gpu's TensorRT provider links libnvinfer.so.10. cuda-python: the native engine
        # runner's device memory and streams (no torch on a deploy-only machine).
        "gpu": ["onnxruntime-gpu>=1.18", "tensorrt>=10,<11", "cuda-python>=12"],
        "train": TRAIN,
        "dev": TRAIN + CPU + ["pytest>=8", "pytest-timeout>=2.2", "ruff>=0.5", "cityscapesscripts>=2.2"],
    },
    entry_points={
        "console_scripts": [
            "cirn-data=cirn.cli:data_main",
            "cirn-eval=cirn.cli:eval_main",
            "cirn-export=cirn.cli:export_main",
            "cirn-run=cirn.cli:run_main",
            "cirn-train=cirn.cli:train_main",
        ],
    },
)
