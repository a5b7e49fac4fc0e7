"""The toy dataset on disk: generate() writes the GTA5, SYNTHIA and Cityscapes layouts. Each image has its own RNG
seeded from (seed, domain, split, index), so the bytes do not depend on the number of workers. toy.json, written
last, marks a complete dataset; a rerun with the same parameters returns at once, an interrupted one resumes.

The target has two looks (look='camera', the original, or 'dusk'): the same scenes and labels painted by another
camera, each in its own folder. Only a dusk dataset's toy.json (and toy.partial) records its look, so camera datasets
keep today's bytes and those made before there were looks are still reused.
"""
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from cirn.common.errors import CirnError
from ..config import TOY_LOOKS
from ..io import atomic_write_bytes, atomic_write_text, write_png
from ..labels import CITYSCAPES_LABEL_IDS, PALETTE, TRAINID_TO_LABELID, TRAINID_TO_SYNTHIA, colorize
from .render import render_frame
from .scene import sample_scene

GENERATOR = "cirn.train.toy"  # what toy.json says made it (the module's name before it was a package)
GENERATOR_VERSION = 1  # the look is frozen: bump this whenever an output byte changes
MANIFEST = "toy.json"
PARTIAL = "toy.partial"  # present while generating: marks the folder as ours (to overwrite and prune) and resumable
FORMATS = {"gta5": ("gta5",), "synthia": ("synthia",), "carla": ("carla",), "both": ("gta5", "synthia")}
SOURCE_PARTS = ("gta5", "synthia", "carla")
TRAIN_CITIES = ("toytown", "pixelburg")
VAL_CITIES = ("valley",)
ANNOTATED_FRAME = 19  # Cityscapes annotates the 20th frame of each 30-frame sequence
TARGET_STYLES = {"camera": "target", "dusk": "dusk"}  # the render style of each look (TOY_LOOKS) of the target


@dataclass(frozen=True)
class ToyPaths:
    """Where a generated toy dataset lives; a source layout that was not generated is None."""
    root: Path
    gta5: Path | None
    synthia: Path | None
    cityscapes: Path
    carla: Path | None = None  # a folder source (images/, labels/) of CARLA raw semantic labels


@dataclass(frozen=True)
class _Job:
    out: Path
    seed: int
    num_source: int
    num_train: int
    num_val: int
    source_size_wh: tuple
    target_size_wh: tuple
    look: str

    @property
    def synthia_size_wh(self):
        """SYNTHIA's 1280x760 aspect at the source width."""
        width = self.source_size_wh[0]
        return (width, round(width * 760 / 1280))

    def params(self, part):
        """What decides a part's bytes (besides seed and version): a part on disk is reused when they match."""
        if part in ("gta5", "carla"):
            return {"images": self.num_source, "size": list(self.source_size_wh)}
        if part == "synthia":
            return {"images": self.num_source, "size": list(self.synthia_size_wh)}
        return {"train": self.num_train, "val": self.num_val, "size": list(self.target_size_wh),
                "cities": {"train": list(TRAIN_CITIES), "val": list(VAL_CITIES)}}

    def tasks(self, part):
        if part == "cityscapes":
            return [(part, "train", i) for i in range(self.num_train)] + [(part, "val", i) for i in range(self.num_val)]
        return [(part, "source", i) for i in range(self.num_source)]


def default_root(seed=0, look="camera"):
    """$CIRN_DATA/toy for seed 0, $CIRN_DATA/toy-seed{seed} otherwise; the dusk look in toy-dusk and
    toy-dusk-seed{seed}. $CIRN_DATA defaults to ~/.cache/cirn."""
    target_style(look)  # validates
    base = Path(os.environ.get("CIRN_DATA") or "~/.cache/cirn").expanduser()
    name = "toy" if look == "camera" else f"toy-{look}"
    return base / (name if seed == 0 else f"{name}-seed{seed}")


def target_style(look):
    """The render style of a look of the target: 'camera' -> 'target', 'dusk' -> 'dusk'."""
    if look not in TOY_LOOKS:
        raise CirnError(f"unknown toy look {look!r}: expected one of {', '.join(TOY_LOOKS)}")
    return TARGET_STYLES[look]


def read_manifest(root):
    """The toy.json of a complete toy dataset at `root`, or None."""
    manifest = _read_json(Path(root) / MANIFEST)
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR else None


def look_of(manifest):
    """The target look a toy.json (or toy.partial) records: 'camera' unless it says otherwise."""
    return manifest.get("look", "camera")


def _look_fields(look):
    """What toy.json and toy.partial record of the look: nothing for 'camera', so its files stay as they were."""
    return {} if look == "camera" else {"look": look}


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def generate(out, seed=0, fmt="gta5", num_source=500, num_train=500, num_val=100, workers=None,
             source_size_wh=(320, 180), target_size_wh=(256, 128), look="camera"):
    """Render the toy pair into `out`: the source in GTA5, SYNTHIA and/or CARLA (folder) layout (fmt 'gta5', 'synthia',
    'both'), the target in Cityscapes layout (train and val) with the given look ('camera' or 'dusk'; the source
    is the same for both). Parts already on disk with the same parameters are kept; a folder that holds the other
    look is an error. toy.json is written last. Returns a short human summary.
    """
    job = _make_job(out, seed, fmt, num_source, num_train, num_val, source_size_wh, target_size_wh, look)
    workers = _check_workers(workers)
    parts = (*FORMATS[fmt], "cityscapes")
    _check_look_on_disk(job)
    old = read_manifest(job.out)
    valid = [p for p in (*SOURCE_PARTS, "cityscapes") if _part_matches(old, job, p)]
    if all(p in valid for p in parts):
        return f"toy dataset in {job.out} is already complete; nothing to do.\n" + _describe(job.out, old)

    _check_ours(job.out)
    todo = [p for p in parts if p not in valid]
    plan = {"version": GENERATOR_VERSION, "seed": job.seed, **_look_fields(job.look),
            "parts": {p: job.params(p) for p in todo}}
    tasks = [task for part in todo for task in job.tasks(part)]
    if _read_json(job.out / PARTIAL) == plan:  # an interrupted run of the same plan: keep what it finished
        tasks = [task for task in tasks if not all((job.out / f).exists() for f in _task_files(*task))]
    job.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.out / PARTIAL, json.dumps(plan) + "\n")
    (job.out / MANIFEST).unlink(missing_ok=True)

    start = time.perf_counter()
    used = _run(tasks, job, workers)
    for part in todo:
        _prune(job, part)
    done = {**{p: old[p] for p in valid}, **plan["parts"]}
    manifest = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": job.seed, **_look_fields(job.look),
                "format": _format_of(done)}
    manifest.update((p, done[p]) for p in (*SOURCE_PARTS, "cityscapes") if p in done)
    atomic_write_text(job.out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    (job.out / PARTIAL).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return (f"toy dataset in {job.out}: {len(tasks)} images rendered in {seconds:.1f} s with {used} "
            f"worker{'s' * (used > 1)}.\n" + _describe(job.out, manifest))


def ensure_toy(root=None, seed=0, fmt="gta5", look="camera"):
    """The toy dataset at `root` (default: default_root(seed, look)), generated there with the default counts the
    first time it is needed; fmt 'synthia' or 'both' adds the SYNTHIA layout when it is missing; look 'dusk' is the
    second target look. Returns ToyPaths.
    """
    if fmt not in FORMATS:
        raise CirnError(f"unknown toy format {fmt!r}: expected one of {', '.join(FORMATS)}")
    root = Path(root).expanduser() if root is not None else default_root(seed, look)
    manifest = read_manifest(root)
    usable = (manifest is not None and manifest.get("version") == GENERATOR_VERSION and manifest.get("seed") == seed
              and look_of(manifest) == look)
    if not usable or any(p not in manifest for p in FORMATS[fmt]):
        print(f"cirn: generating the toy dataset (seed {seed}, {fmt}, {look} look) into {root}: first use, about a "
              "minute", file=sys.stderr, flush=True)
        generate(root, seed=seed, fmt=fmt, look=look, **(_counts_of(manifest) if usable else {}))
        manifest = read_manifest(root)
    return ToyPaths(root, root / "gta5" if "gta5" in manifest else None,
                    root / "synthia" if "synthia" in manifest else None, root / "cityscapes",
                    root / "carla" if "carla" in manifest else None)


def _counts_of(manifest):
    """generate() arguments that reproduce the parts a manifest already has."""
    counts = {}
    if "cityscapes" in manifest:
        part = manifest["cityscapes"]
        counts.update(num_train=part["train"], num_val=part["val"], target_size_wh=tuple(part["size"]))
    source = manifest.get("gta5") or manifest.get("synthia") or manifest.get("carla")
    if source:
        counts["num_source"] = source["images"]
    for part in ("gta5", "carla"):
        if part in manifest:
            counts["source_size_wh"] = tuple(manifest[part]["size"])
    return counts


def _make_job(out, seed, fmt, num_source, num_train, num_val, source_size_wh, target_size_wh, look):
    if fmt not in FORMATS:
        raise CirnError(f"unknown toy format {fmt!r}: expected one of {', '.join(FORMATS)}")
    target_style(look)  # validates
    if not is_int(seed) or seed < 0:
        raise CirnError(f"toy seed must be a non-negative integer, got {seed!r}")
    for name, count in (("num_source", num_source), ("num_train", num_train), ("num_val", num_val)):
        if not is_int(count) or count < 1:
            raise CirnError(f"{name} must be an integer >= 1, got {count!r}")
    for name, size_wh in (("source_size_wh", source_size_wh), ("target_size_wh", target_size_wh)):
        if (not isinstance(size_wh, (tuple, list)) or len(size_wh) != 2 or not all(is_int(s) for s in size_wh)
                or not all(32 <= s <= 4096 for s in size_wh)):
            raise CirnError(f"{name} must be (width, height) with each in 32..4096 pixels, got {size_wh!r}")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise CirnError(f"toy output {out} exists and is not a folder")
    return _Job(out, int(seed), int(num_source), int(num_train), int(num_val),
                tuple(int(s) for s in source_size_wh), tuple(int(s) for s in target_size_wh), look)


def is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_workers(workers):
    if workers is None:
        return os.cpu_count() or 1
    if not is_int(workers) or workers < 1:
        raise CirnError(f"workers must be an integer >= 1 (or None for all cores), got {workers!r}")
    return int(workers)


def _part_matches(manifest, job, part):
    return (manifest is not None and manifest.get("version") == GENERATOR_VERSION
            and manifest.get("seed") == job.seed and manifest.get(part) == job.params(part))


def _check_look_on_disk(job):
    """Refuse to render one look over the other: each look has its own folder (default_root), and a silent
    regeneration would replace the other look's target images in place."""
    for name, what in ((MANIFEST, "the"), (PARTIAL, "an unfinished")):
        found = _read_json(job.out / name)
        if isinstance(found, dict) and look_of(found) != job.look:
            raise CirnError(f"{job.out} holds {what} toy dataset of the {look_of(found)} look, not {job.look}: "
                            f"choose another output folder (the {job.look} look's default is "
                            f"{default_root(job.seed, job.look)}) or remove {job.out}")


def _check_ours(out):
    """Refuse to write into a folder that holds datasets we did not make: we overwrite and prune our own."""
    if (out / MANIFEST).exists() or (out / PARTIAL).exists():
        return
    clash = [name for name in (*SOURCE_PARTS, "cityscapes") if (out / name).exists()]
    if clash:
        raise CirnError(f"{out} already holds {', '.join(clash)} but no {MANIFEST}, so it is not a toy dataset; "
                        "choose another output folder or remove those folders")


def _format_of(manifest):
    """The source layouts a manifest holds: gta5, synthia, carla, both (gta5 and synthia), or a '+' list."""
    present = [p for p in SOURCE_PARTS if p in manifest]
    return "both" if present == ["gta5", "synthia"] else "+".join(present)


def _describe(out, manifest):
    lines = []
    for part in SOURCE_PARTS:
        if part in manifest:
            p = manifest[part]
            layout = "folder layout, CARLA raw semantic labels: --source folder --label-map carla" if part == "carla" \
                else f"{part} layout"
            lines.append(f"  source ({layout}): {out / part}  {p['images']} images, {p['size'][0]}x{p['size'][1]}")
    p = manifest["cityscapes"]
    layout = "cityscapes layout" + ("" if look_of(manifest) == "camera" else f", {look_of(manifest)} look")
    lines.append(f"  target ({layout}): {out / 'cityscapes'}  {p['train']} train + {p['val']} val, "
                 f"{p['size'][0]}x{p['size'][1]}")
    return "\n".join(lines)


def _run(tasks, job, workers):
    """Render every task; returns the number of processes used. Bytes do not depend on it."""
    workers = max(1, min(workers, len(tasks)))
    if workers == 1 or multiprocessing.current_process().daemon:  # daemons (e.g. loader workers) cannot fork
        for task in tasks:
            _render_task(job, task)
        return 1
    chunk = max(1, len(tasks) // (workers * 8))
    with multiprocessing.get_context().Pool(workers) as pool:
        for _ in pool.imap_unordered(partial(_render_task, job), tasks, chunksize=chunk):
            pass
    return workers


SPLIT_CODES = {"source": 0, "train": 1, "val": 2}


def _image_rng(seed, split, index, stream=0):
    """Each image's own RNG: (seed, domain, split, index) and a stream (0 scene, 1 camera noise)."""
    domain = 0 if split == "source" else 1
    return np.random.default_rng([seed, domain, SPLIT_CODES[split], index, stream])


def _task_files(part, split, index):
    """The files one task writes, relative to the dataset root, in the order _render_task writes them."""
    if part == "gta5":
        name = f"{index + 1:05d}.png"
        return [f"gta5/images/{name}", f"gta5/labels/{name}"]
    if part == "synthia":
        name = f"{index:07d}.png"
        return [f"synthia/RGB/{name}", f"synthia/GT/LABELS/{name}"]
    if part == "carla":
        name = f"{index:08d}.png"  # CARLA's save_to_disk names frames by an 8-digit frame number
        return [f"carla/images/{name}", f"carla/labels/{name}"]
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    city = cities[index % len(cities)]
    stem = f"{split}/{city}/{city}_{index // len(cities):06d}_{ANNOTATED_FRAME:06d}"
    return [f"cityscapes/leftImg8bit/{stem}_leftImg8bit.png", f"cityscapes/gtFine/{stem}_gtFine_labelIds.png",
            f"cityscapes/gtFine/{stem}_gtFine_color.png"]


def _render_task(job, task):
    part, split, index = task
    paths = [job.out / f for f in _task_files(part, split, index)]
    if part == "cityscapes":
        scene = sample_scene(_image_rng(job.seed, split, index), "target")
        frame = render_frame(scene, job.target_size_wh, TARGET_STYLES[job.look],
                             rng=_image_rng(job.seed, split, index, stream=1))
        write_png(paths[0], frame.image)
        write_png(paths[1], TRAINID_TO_LABELID[frame.labels])
        write_png(paths[2], colorize(frame.labels))
        return
    scene = sample_scene(_image_rng(job.seed, split, index), "source")
    if part == "gta5":
        frame = render_frame(scene, job.source_size_wh, "source")
        write_png(paths[0], frame.image)
        atomic_write_bytes(paths[1], _palette_png(TRAINID_TO_LABELID[frame.labels]))
    elif part == "carla":
        frame = render_frame(scene, job.source_size_wh, "source", instances=True)
        write_png(paths[0], frame.image)
        write_png(paths[1], carla_raw_semantic(frame.labels, frame.instances))
    else:
        frame = render_frame(scene, job.synthia_size_wh, "source", instances=True)
        gt = np.zeros((*frame.labels.shape, 3), np.uint16)  # class id in R, instance id in G
        gt[..., 0] = TRAINID_TO_SYNTHIA[frame.labels]
        gt[..., 1] = frame.instances
        write_png(paths[0], frame.image)
        write_png(paths[1], gt)


def carla_raw_semantic(trainids, instances):
    """A CARLA >= 0.9.14 raw semantic image: (H, W, 3) uint8 RGB, the tag in R (tags 1..19 = trainIds 0..18, 0 = None
    for ignored pixels), the instance id in G (low byte) and B (high byte)."""
    raw = np.zeros((*trainids.shape, 3), np.uint8)
    raw[..., 0] = np.where(trainids == 255, 0, trainids.astype(np.int16) + 1)
    raw[..., 1] = instances & 255
    raw[..., 2] = (instances >> 8) & 255
    return raw


def _palette_png(label_ids):
    """GTA5 labels: a palette PNG whose pixel values are Cityscapes labelIds, shown in Cityscapes colours."""
    palette = np.zeros((256, 3), np.uint8)
    for train_id, label_id in enumerate(CITYSCAPES_LABEL_IDS):
        palette[label_id] = PALETTE[train_id]
    img = Image.fromarray(np.ascontiguousarray(label_ids, np.uint8))
    img.putpalette(palette.tobytes())
    buf = BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _prune(job, part):
    """Delete files of an earlier, larger run that this run did not write (the folder is ours: toy.partial)."""
    folders = {"gta5": ["gta5"], "synthia": ["synthia"], "carla": ["carla"],
               "cityscapes": ["cityscapes/leftImg8bit", "cityscapes/gtFine"]}
    expected = {job.out / f for task in job.tasks(part) for f in _task_files(*task)}
    for folder in folders[part]:
        for path in (job.out / folder).rglob("*"):
            if path.is_file() and path not in expected:
                path.unlink()
