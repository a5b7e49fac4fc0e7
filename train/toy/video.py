"""A toy dashcam clip (cirn-data toy-video): the camera drives down one target-domain street, in either look."""
import os
from pathlib import Path

import numpy as np

from cirn.common.errors import CirnError
from ..io import write_png
from ..labels import TRAINID_TO_LABELID
from .dataset import is_int, target_style
from .render import render_frame
from .scene import SCENE_LENGTH, Box, Scene, sample_scene

VIDEO_CODE = 3  # the clip's RNG streams: (seed, VIDEO_CODE, ...), apart from every dataset image's
CLIP_SEQUENCE = 0  # the Cityscapes sequence number in the clip's frame names


class _ClipCamera:
    """The RNG a clip frame's camera finish draws from: one drive, one camera.

    _finish_like_a_camera draws scalars for the look of a shot (light direction and strength, white balance, blur,
    vignette, noise level, JPEG quality) and arrays for its noise (grain, textures, clouds, sensor noise). Scalars
    come from an RNG restarted identically for every frame, so the lighting and white balance stay put over the
    clip; arrays come from the frame's own RNG, so the noise changes from frame to frame like a real sensor's.
    """

    def __init__(self, seed, frame):
        self.look = np.random.default_rng([seed, VIDEO_CODE, 1])
        self.noise = np.random.default_rng([seed, VIDEO_CODE, 2, frame])

    def _pick(self, size):
        return self.look if size is None or np.prod(size) <= 16 else self.noise

    def standard_normal(self, size=None):
        return self._pick(size).standard_normal(size)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._pick(size).normal(loc, scale, size)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self._pick(size).uniform(low, high, size)

    def integers(self, low, high=None, size=None):
        return self._pick(size).integers(low, high, size)


def _clear_ego_lane(scene, until, half_width=1.4, clearance=3.0):
    """The scene without the street things in the camera's lane up to z = `until` (a drive does not pass through
    cars or people), nor their ground shadows. Things above `clearance` metres (overhead lights) stay."""
    lane = (scene.ego_x - half_width, scene.ego_x + half_width)

    def extent(points):
        xs, ys, zs = zip(*points, strict=True)
        return min(xs), max(xs), min(ys), min(zs)

    def blocks(points):
        x0, x1, y0, z0 = extent(points)
        return x1 > lane[0] and x0 < lane[1] and y0 < clearance and z0 < until

    def thing_blocks(thing):
        if thing.layer != 2:
            return False
        for part in thing.parts:
            points = [part.lo, part.hi] if isinstance(part, Box) else list(part.points)
            if blocks(points):
                return True
        return False

    things = [t for t in scene.things if not thing_blocks(t)]
    shadows = [s for s in scene.shadows if not blocks(s)]
    return Scene(scene.mix, scene.sky, scene.sun, scene.ego_x, scene.length, scene.ground, shadows, things)


def render_video(out, frames=120, fps=15.0, seed=0, size_wh=(256, 128), speed=6.0, look="camera"):
    """Render a toy dashcam clip: the camera drives `speed` m/s down one target-domain street, in the target's
    `look` ('camera' or 'dusk': the same street and ground truth); returns {'video', 'root', 'frames', 'fps',
    'size_wh', 'metres'}.

    out: the .mp4 to write (mp4v, the MPEG-4 codec every OpenCV build has). Beside it, `root` = out without its
    suffix holds the ground truth in the Cityscapes layout: gtFine/val/{stem}/{stem}_000000_{k:06d}_gtFine_labelIds.png
    for frame k, the names `cirn-run --labels-dir` gives its predictions, so `cirn-eval --pred-dir LABELS
    --target-root ROOT` scores the clip. Lighting and white balance stay constant over the clip, noise is per
    frame (_ClipCamera). The bytes depend only on the arguments.
    """
    import cv2

    from ..io import atomic_path
    out = Path(out).expanduser()
    if out.suffix.lower() != ".mp4":
        raise CirnError(f"the toy clip is an MP4 file: give --out a name ending in .mp4, not {out.name!r}")
    if not is_int(frames) or frames < 1:
        raise CirnError(f"frames must be an integer >= 1, got {frames!r}")
    if not fps > 0 or not speed >= 0:
        raise CirnError(f"fps must be positive and speed non-negative, got fps {fps} and speed {speed}")
    if not is_int(seed) or seed < 0:
        raise CirnError(f"seed must be a non-negative integer, got {seed!r}")
    style = target_style(look)
    width, height = (int(s) for s in size_wh)
    if not (32 <= width <= 4096 and 32 <= height <= 4096) or width % 2 or height % 2:
        raise CirnError(f"size must be even WIDTHxHEIGHT in 32..4096 pixels (MPEG-4 needs even sides), "
                        f"got {width}x{height}")
    metres = (frames - 1) * speed / fps
    # The grammar fills the street up to `length` (traffic within the first 80 m): a long drive gets a long street.
    scene = sample_scene(np.random.default_rng([seed, VIDEO_CODE, 0]), "target",
                         length=max(SCENE_LENGTH, metres + 100.0))
    scene = _clear_ego_lane(scene, until=metres + 12.0)
    stem = out.stem
    root = out.with_suffix("")
    label_dir = root / "gtFine" / "val" / stem
    label_dir.mkdir(parents=True, exist_ok=True)
    expected = set()
    with atomic_path(out) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a video to share, not a private temporary file
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
        if not writer.isOpened():
            raise CirnError(f"OpenCV cannot write an MPEG-4 (mp4v) video to {out}")
        try:
            for k in range(frames):
                frame = render_frame(scene, (width, height), style, camera_forward=k * speed / fps,
                                     rng=_ClipCamera(seed, k))
                writer.write(np.ascontiguousarray(frame.image[..., ::-1]))  # RGB -> BGR
                name = f"{stem}_{CLIP_SEQUENCE:06d}_{k:06d}_gtFine_labelIds.png"
                write_png(label_dir / name, TRAINID_TO_LABELID[frame.labels])
                expected.add(name)
        finally:
            writer.release()
    for path in label_dir.glob("*_gtFine_labelIds.png"):  # frames of an earlier, longer clip of the same name
        if path.name not in expected:
            path.unlink()
    return {"video": str(out), "root": str(root), "frames": frames, "fps": float(fps), "size_wh": [width, height],
            "metres": metres}
