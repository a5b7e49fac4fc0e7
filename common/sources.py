"""Where frames come from: a video file, an image, a folder of images or a camera, all as one iterator.

    source = open_source("drive.mp4", stride=2)
    for frame in source:          # SourceFrame(index, name, image (H, W, 3) uint8 RGB)
        ...
    source.decode_error           # None, or why decoding stopped before the end the container announced

open_source checks everything it can before the first frame is used (a missing file, a file that is not a video,
a codec OpenCV's FFmpeg lacks, a video without frames): each is a CirnError naming the file. A frame or image that
cannot be decoded later on is handled by the `bad_frames` policy:
    stop  (default) end the iteration there, keeping the reason in `decode_error`: what came before is processed;
    skip  leave it out, note it in `skipped` (frame names) and go on;
    fail  raise BadFrame (a CirnError naming the frame): the run fails and writes nothing.

Frame names follow the Cityscapes pattern {city}_{sequence:06d}_{frame:06d}, so per-frame label PNGs of a video
line up with the ground truth of `cirn-data toy-video` for `cirn-eval`; images keep their own names (less a
`_leftImg8bit` suffix), relative to the folder given.
"""
import abc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cirn.common.files import CITYSCAPES_IMAGE_SUFFIX, IMAGE_SUFFIXES
from cirn.common.errors import CirnError

SEQUENCE = 0  # the Cityscapes sequence number in a video's frame names (toy.video.CLIP_SEQUENCE)
BAD_FRAME_POLICIES = ("stop", "skip", "fail")
MAX_BAD_IN_A_ROW = 50  # this many undecodable frames in a row end a video (a truncated file, not a glitch)


class BadFrame(CirnError):
    """A frame or image that could not be decoded, under bad_frames='fail'."""


@dataclass
class SourceFrame:
    """One decoded frame."""
    index: int          # position in the source (before the stride)
    name: str           # for per-frame outputs: 'clip_000000_000042', 'city/name'
    image: np.ndarray   # (H, W, 3) uint8 RGB


class FrameSource(abc.ABC):
    """Iterates SourceFrames of every `stride`-th frame; `kind`, `fps`, `count` (frames it will yield, or None when
    unknown), `size_wh` (W, H) of the first frame, `decode_error` and `skipped` (names of undecodable frames) after
    iterating."""

    kind = "source"

    def __init__(self, description, stride=1, bad_frames="stop"):
        if stride < 1:
            raise CirnError(f"--stride must be at least 1, got {stride}")
        if bad_frames not in BAD_FRAME_POLICIES:
            raise CirnError(f"--bad-frames must be one of {', '.join(BAD_FRAME_POLICIES)}, got {bad_frames!r}")
        self.description, self.stride, self.bad_frames = description, stride, bad_frames
        self.fps, self.count, self.size_wh, self.decode_error = None, None, None, None
        self.skipped = []

    def _bad(self, name, reason):
        """Apply the bad-frame policy to frame `name`: True = skip it and go on, False = stop here."""
        if self.bad_frames == "fail":
            raise BadFrame(f"{self.description}: {reason} (--bad-frames skip leaves such frames out, stop keeps "
                           "what came before)")
        if self.bad_frames == "skip":
            self.skipped.append(name)
            return True
        self.decode_error = reason
        return False

    @abc.abstractmethod
    def __iter__(self):
        """Yield the frames of this source (stride applied) as SourceFrame."""

    def close(self):  # noqa: B027 (a no-op by default; sources that hold a file override it)
        """Release the file or device."""


def _name_of(path, root=None):
    """A frame name from an image path: relative to `root` when given, without the suffix (or _leftImg8bit.png)."""
    rel = Path(path).relative_to(root) if root else Path(Path(path).name)
    text = rel.as_posix()
    return text[:-len(CITYSCAPES_IMAGE_SUFFIX)] if text.endswith(CITYSCAPES_IMAGE_SUFFIX) else str(rel.with_suffix(""))


def _read_rgb(path):
    """(H, W, 3) uint8 RGB of an image file, a CirnError naming it otherwise."""
    from cirn.common.files import read_image
    return np.ascontiguousarray(read_image(path))


def list_images(folder):
    """Every image file under `folder`, sorted, recursive; an error when there is none."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CirnError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return files


class ImageSource(FrameSource):
    """One image file, or every image under a folder (sorted, recursive); `files`: only these (position in the
    folder's sorted list, path) of its images (a shard of it, already strided)."""

    def __init__(self, path, stride=1, bad_frames="stop", files=None):
        super().__init__(str(path), stride, bad_frames)
        path = Path(path)
        self.positions = None
        if path.is_dir():
            self.kind, self.root = "folder", path
            if files is not None:
                self.positions, self.files = [p for p, _ in files], [f for _, f in files]
            else:
                self.files = list_images(path)[::stride]
        else:
            self.kind, self.root, self.files = "image", None, [path]
        self.count = len(self.files)
        if not self.files:
            raise CirnError(f"no images of {path} to process")
        first = None
        for candidate in self.files if bad_frames == "skip" else self.files[:1]:
            try:
                first = _read_rgb(candidate)  # a broken first image is an error now, not mid-run
                break
            except CirnError:
                if bad_frames != "skip":
                    raise
        if first is None:
            raise CirnError(f"none of the {len(self.files)} images of {path} can be read")
        self.size_wh = (first.shape[1], first.shape[0])

    def __iter__(self):
        for k, path in enumerate(self.files):
            name = _name_of(path, self.root)
            try:
                image = _read_rgb(path)
            except CirnError as err:
                if self._bad(name, str(err)):
                    continue
                return
            yield SourceFrame(self.positions[k] if self.positions else k * self.stride, name, image)


class VideoSource(FrameSource):
    """A video file or a camera (an integer index) through cv2.VideoCapture (FFmpeg for files).

    Frames between samples (stride) are grabbed, not converted into images. A frame that cannot be decoded while
    later ones can goes through the bad-frame policy; when no later frame decodes, the stream ends there (a decode
    error kept in `decode_error` if the container announced more); a camera simply ends.
    """

    def __init__(self, spec, stride=1, bad_frames="stop"):
        import cv2
        camera = isinstance(spec, int)
        super().__init__(f"camera {spec}" if camera else str(spec), stride, bad_frames)
        self.kind = "camera" if camera else "video"
        self.cv2 = cv2
        self.capture = cv2.VideoCapture(spec) if camera else cv2.VideoCapture(str(spec), cv2.CAP_FFMPEG)
        self.city = f"camera{spec}" if camera else Path(spec).stem
        if not self.capture.isOpened():
            if camera:
                raise CirnError(f"cannot open camera {spec}: no such device, or it is in use")
            raise CirnError(f"cannot open {spec} as a video: it is not a video file, or its container or codec is "
                            "one this OpenCV build's FFmpeg cannot read (re-encode it, e.g. ffmpeg -i IN -c:v mpeg4 "
                            "OUT.mp4)")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else None
        total = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.total = total if total > 0 and not camera else None
        self.count = -(-self.total // stride) if self.total else None
        ok, first = self.capture.read()
        if not ok or first is None:
            self.capture.release()
            if camera:
                raise CirnError(f"camera {spec} opened but delivered no frame")
            fourcc = int(self.capture.get(cv2.CAP_PROP_FOURCC))
            codec = "".join(chr((fourcc >> 8 * i) & 0xFF) for i in range(4)).strip("\0 ") if fourcc else "?"
            if not total:
                raise CirnError(f"{spec} has no frames")
            raise CirnError(f"cannot decode the first of the {total} frames of {spec} (codec {codec!r}): the file "
                            "is damaged or truncated, or this OpenCV build's FFmpeg cannot decode the codec")
        self.first = first
        self.size_wh = (first.shape[1], first.shape[0])

    def name(self, index):
        """The Cityscapes-style name of frame `index`: {city}_000000_{index:06d}."""
        return f"{self.city}_{SEQUENCE:06d}_{index:06d}"

    def _read(self, convert):
        """The next frame: (True, BGR image or None when not `convert`ed) or (False, None)."""
        try:
            return self.capture.read() if convert else (self.capture.grab(), None)
        except self.cv2.error:
            return False, None

    def __iter__(self):
        index, frame = 0, self.first
        self.first = None
        while True:
            sampled = index % self.stride == 0
            if frame is None:
                ok, frame = self._read(sampled)
                if not ok:
                    # FFmpeg gives up on an undecodable frame and goes on with the next: a glitch if a later frame
                    # decodes, the end of what the file holds (a truncated file, an overestimated count) if none does.
                    failed = index
                    while not ok:
                        index += 1
                        if not self.total or index >= self.total or index - failed >= MAX_BAD_IN_A_ROW:
                            if self.total and failed < self.total:
                                self.decode_error = f"decoding stopped at frame {failed} of the {self.total} announced"
                            return
                        ok, frame = self._read(True)
                    for bad in range(failed, index):
                        if bad % self.stride == 0 and not self._bad(
                                self.name(bad), f"frame {bad} of the {self.total} announced could not be decoded"):
                            return
                    sampled = index % self.stride == 0
            if sampled:
                yield SourceFrame(index, self.name(index), self.cv2.cvtColor(frame, self.cv2.COLOR_BGR2RGB))
            frame, index = None, index + 1

    def close(self):
        self.capture.release()


def open_source(spec, stride=1, bad_frames="stop", files=None):
    """A FrameSource for `spec`: an int (or digits) = camera index, a folder = its images (or only `files` of it),
    an image file, else a video file. Raises CirnError for anything that cannot yield a first frame."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit() and not Path(spec).exists()):
        return VideoSource(int(spec), stride, bad_frames)
    path = Path(spec).expanduser()
    if not path.exists():
        raise CirnError(f"source {path} does not exist")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource(path, stride, bad_frames, files)
    return VideoSource(path, stride, bad_frames)
