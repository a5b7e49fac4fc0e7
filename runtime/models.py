"""Which model `cirn-run` uses when none is given: the newest export under ./runs, else the newest checkpoint."""
from pathlib import Path

from cirn.common.errors import CirnError


def find_default_model(runs_dir="runs"):
    """The newest model.onnx under runs_dir (an exported toy run), else the newest best.pt; a CirnError if none."""
    runs_dir = Path(runs_dir)
    for pattern in ("model.onnx", "best.pt"):
        found = sorted(runs_dir.rglob(pattern), key=lambda p: p.stat().st_mtime) if runs_dir.is_dir() else []
        if found:
            return found[-1]
    raise CirnError(f"no --model given and no model.onnx or best.pt under {runs_dir}/: train one (cirn-train "
                    "oracle), export it (cirn-export), or pass --model FILE")
