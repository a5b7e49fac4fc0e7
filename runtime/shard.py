"""Many sources over many processes: `cirn-run A.mp4 B.mp4 frames/ --out-dir OUT --shard I/N`.

The work is split without any coordination between the processes, so each output is written by exactly one of them:
videos (and single images, cameras) go round-robin, the k-th to shard k mod N; the images of a folder are
interleaved, image j (after --stride) to shard j mod N. Under torchrun (`torchrun --nproc-per-node N $(which
cirn-run) ...`) the shard defaults to RANK/WORLD_SIZE and each process takes GPU LOCAL_RANK.

Outputs under OUT: a video NAME gets NAME_seg.mp4 and NAME_seg.json (with --labels, its frames' trainId PNGs in
labels/); a folder NAME gets its images' PNGs in labels/NAME/ and, per shard, NAME_seg.shard-I-of-N.json.
"""
import os
from dataclasses import dataclass
from pathlib import Path

from cirn.common.errors import CirnError

from .sources import list_images


@dataclass
class Job:
    """One source (or this shard's part of a folder) and where its outputs go."""
    source: str
    name: str
    kind: str               # video | camera | image | folder
    files: list = None      # folder: this shard's (position in the folder, path), strided; None otherwise


def parse_shard(text):
    """'I/N' -> (I, N); None -> (RANK, WORLD_SIZE) under torchrun, else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if text is None:
        return int(os.environ.get("RANK", "0")), world
    if world > 1:
        raise CirnError(f"--shard {text} under torchrun would give all {world} processes the same shard: leave it "
                        "out (each process takes RANK/WORLD_SIZE)")
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise CirnError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise CirnError(f"--shard {text}: I must be in 0..N-1")
    return index, count


def threads_per_process():
    """CPU inference threads for one of torchrun's processes on this node (its share of the cores), or None."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local <= 1:
        return None
    from .backends import available_cores
    return max(1, available_cores() // local)


def pin_gpu():
    """Under torchrun, show this process only its GPU (LOCAL_RANK of the visible ones), before CUDA starts."""
    if "LOCAL_RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else None
    local = int(os.environ["LOCAL_RANK"])
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[local % len(devices)] if devices else str(local)


def _kind(source):
    if str(source).isdigit() and not Path(source).exists():
        return "camera"
    path = Path(source)
    if not path.exists():
        raise CirnError(f"source {path} does not exist")
    if path.is_dir():
        return "folder"
    from cirn.common.files import IMAGE_SUFFIXES
    return "image" if path.suffix.lower() in IMAGE_SUFFIXES else "video"


def plan(sources, shard=(0, 1), stride=1):
    """This shard's Jobs for `sources`, in order; names (the sources' stems) must be unique."""
    index, count = shard
    jobs, names, whole = [], {}, 0
    for source in sources:
        kind = _kind(source)
        name = f"camera{source}" if kind == "camera" else Path(source).stem if kind != "folder" else Path(source).name
        if name in names:
            raise CirnError(f"two sources would write outputs named {name!r}: {names[name]} and {source}; "
                            "rename one or run them separately")
        names[name] = source
        if kind == "folder":
            files = list(enumerate(list_images(source)))[::stride][index::count]
            if files:
                jobs.append(Job(str(source), name, kind, files))
        else:
            if whole % count == index:
                jobs.append(Job(str(source), name, kind))
            whole += 1
    return jobs


def outputs(job, out_dir, shard=(0, 1), labels=False):
    """run()'s output arguments for `job` under `out_dir`: {'out', 'labels_dir', 'summary'}."""
    out_dir = Path(out_dir)
    index, count = shard
    if job.kind in ("video", "camera"):
        return {"out": out_dir / f"{job.name}_seg.mp4", "summary": out_dir / f"{job.name}_seg.json",
                "labels_dir": out_dir / "labels" if labels else None}
    suffix = f".shard-{index}-of-{count}" if count > 1 else ""
    return {"out": None, "summary": out_dir / f"{job.name}_seg{suffix}.json",
            "labels_dir": out_dir / "labels" / job.name}
