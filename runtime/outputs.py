"""What a run writes: the overlay video, per-frame label PNGs, an NPZ of label maps, and class pixel shares.

Files appear under their final names only when complete: the video and the NPZ are written to temporary names
beside them and renamed by `finish()` (also after Ctrl-C: a partial but playable video); `discard()` deletes them.
Each label PNG is written atomically.
"""
import os
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from cirn.common.errors import CirnError

LEGEND_MIN_SHARE = 0.005  # classes under 0.5 % of a frame stay out of its legend
_UMASK = os.umask(0)
os.umask(_UMASK)


# ---------------------------------------------------------------- drawing
def resize_frame(image, size_hw):
    """(H0, W0, 3) -> (H, W, 3) for size_hw=(H, W): area averaging when shrinking (antialiased, like the datasets'
    PIL bicubic), bilinear otherwise; the same array when the size already matches."""
    import cv2
    height, width = size_hw
    if image.shape[:2] == (height, width):
        return image
    shrink = height <= image.shape[0] and width <= image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_labels(labels, size_hw):
    """(h, w) label map -> (H, W) for size_hw=(H, W), nearest neighbour at pixel centres."""
    import cv2
    if labels.shape == tuple(size_hw):
        return labels
    return cv2.resize(labels, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST_EXACT)


def class_counts(labels, num_classes):
    """(C,) int64 pixel count per class of a uint8 label map (ignored ids beyond C are not counted)."""
    import cv2
    if labels.size >= 2**24:  # calcHist counts in float32, exact below 2^24
        return np.bincount(labels.ravel(), minlength=256)[:num_classes]
    return cv2.calcHist([labels], [0], None, [256], [0, 256]).reshape(-1)[:num_classes].astype(np.int64)  # 2x faster


def colour_lut(palette):
    """(256,) uint32 lookup table: trainId -> its RGB colour packed in the low three bytes (black beyond the
    palette), so that one numpy take gives the colours of a label map (cheaper than cv2.LUT on 3 channels)."""
    rgb = np.zeros((256, 4), np.uint8)
    rgb[:len(palette), :3] = palette
    return rgb.view("<u4").reshape(256)


def palette_key(palette):
    """The palette as a tuple of RGB tuples of ints (hashable: the legend cache's key); one already in that form is
    returned as it is (Outputs converts once, so the per-frame legend does not)."""
    if isinstance(palette, tuple) and all(isinstance(p, tuple) for p in palette):
        return palette
    return tuple(tuple(int(v) for v in p) for p in palette)


def overlay(image, labels, palette, alpha=0.5, class_names=None, counts=None, lut=None):
    """(H, W, 3) RGB frame with the label colours blended in at `alpha`; with class_names, a legend of the classes
    present (by share, as many as fit). counts: class_counts of labels when already computed; lut: colour_lut of
    the palette when already built."""
    import cv2
    lut = colour_lut(palette) if lut is None else lut
    rgba = lut.take(labels).view(np.uint8).reshape(*labels.shape, 4)  # little-endian: R, G, B, 0
    colours = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    blended = cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)
    if class_names is not None:
        counts = class_counts(labels, len(class_names)) if counts is None else counts
        draw_legend(blended, counts / max(labels.size, 1), palette, class_names)
    return blended


@lru_cache(maxsize=8)
def _legend_layout(height, class_names):
    """Font scale, text height, line pitch and each name's width for frames `height` pixels high."""
    import cv2
    scale = max(0.28, height / 720.0 * 0.6)
    (_, text_h), _ = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    widths = tuple(cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for n in class_names)
    return scale, text_h, text_h + max(3, text_h // 2), widths


@lru_cache(maxsize=256)
def _legend_patch(height, width, present, palette, class_names):
    """The legend of classes `present` (trainIds, in order) for frames of `height` x `width`: (patch drawn on black,
    mask of its drawn pixels)."""
    import cv2
    scale, text_h, line, widths = _legend_layout(height, class_names)
    swatch, pad = text_h, max(2, text_h // 3)
    box_w = min(width, swatch + 3 * pad + max(widths[c] for c in present))
    patch = np.zeros((min(height, len(present) * line + pad), box_w, 3), np.uint8)
    for row, c in enumerate(present):
        top = pad + row * line
        cv2.rectangle(patch, (pad, top), (pad + swatch - 1, top + swatch - 1), palette[c], -1)
        cv2.putText(patch, class_names[c], (2 * pad + swatch, top + text_h), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    mask = np.zeros(patch.shape[:2], np.uint8)
    for row in range(len(present)):  # swatches: every pixel, even where a class colour has a zero channel
        top = pad + row * line
        mask[top:top + swatch, pad:pad + swatch] = 1
    mask |= patch.any(axis=2)  # text
    return patch, mask.astype(bool)


def draw_legend(image, shares, palette, class_names):
    """Draw, in place at the top left, a swatch and the name of every class with a share >= LEGEND_MIN_SHARE (the
    largest ones, as many as fit in the frame's height), in class order.

    Class order keeps the legend still from frame to frame, and lets each distinct legend be drawn once and reused
    (drawing text costs more than the rest of the overlay)."""
    height, width = image.shape[:2]
    class_names = tuple(class_names)
    _, _, line, _ = _legend_layout(height, class_names)
    shown = np.flatnonzero(shares >= LEGEND_MIN_SHARE)
    room = max(0, (height - 4) // line)
    if len(shown) > room:  # the largest that fit, still in class order
        shown = np.sort(shown[np.argsort(-shares[shown], kind="stable")[:room]])
    if not len(shown):
        return image
    patch, mask = _legend_patch(height, width, tuple(shown.tolist()), palette_key(palette), class_names)
    box = image[:patch.shape[0], :patch.shape[1]]
    np.right_shift(box, 1, out=box)  # darken behind the text
    np.copyto(box, patch, where=mask[..., None])
    return image


def write_label_png(path, labels):
    """(H, W) uint8 trainIds as a single-channel PNG, atomically (OpenCV's encoder at a fast level: ~3x quicker
    than PIL's, files within a few percent)."""
    import cv2
    ok, encoded = cv2.imencode(".png", labels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise CirnError(f"cannot encode the label map for {path}")
    write_atomically(path, encoded.tobytes())


def write_atomically(path, data):
    """Write bytes to a temporary file beside `path` and rename it into place (readable as the umask allows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")  # one name per file: fewer system calls than mkstemp per frame
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- writers
def _temp_beside(path):
    """A new temporary file next to `path` keeping its suffix (OpenCV picks the container from it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial" + path.suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the finished file gets the usual permissions
    return Path(tmp)


class VideoOutput:
    """An MP4 (mp4v: MPEG-4 Part 2, the codec every OpenCV FFmpeg build can write) opened at the first frame.

    H.264 ('avc1') needs an encoder that OpenCV's pip wheels do not ship, so mp4v is the one that works everywhere.
    Frames of another size than the first are resized to it.
    """

    FOURCC = "mp4v"

    def __init__(self, path, fps):
        self.path, self.fps = Path(path), float(fps)
        self.tmp, self.writer, self.size_wh, self.frames = None, None, None, 0

    def write(self, rgb):
        """Append one (H, W, 3) uint8 RGB frame."""
        import cv2
        if self.writer is None:
            self.size_wh = (rgb.shape[1], rgb.shape[0])
            self.tmp = _temp_beside(self.path)
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.FOURCC), self.fps, self.size_wh)
            if not self.writer.isOpened():
                self.tmp.unlink(missing_ok=True)
                raise CirnError(f"OpenCV cannot write an MPEG-4 video to {self.path}")
        if (rgb.shape[1], rgb.shape[0]) != self.size_wh:
            rgb = cv2.resize(rgb, self.size_wh, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def finish(self):
        """Close the file (writing the MP4 index, so it plays) and give it its final name; None if no frame came."""
        if self.writer is None:
            return None
        self.writer.release()
        os.replace(self.tmp, self.path)
        self.writer = None
        return str(self.path)

    def discard(self):
        """Close and delete the unfinished file."""
        if self.writer is not None:
            self.writer.release()
            self.tmp.unlink(missing_ok=True)
            self.writer = None


class NpzOutput:
    """Label maps streamed into an .npz (one deflated `{name}.npy` entry per frame, plus `_index`: the frames' source
    indices), so memory stays flat however long the video. np.load(path)[name] reads one back."""

    def __init__(self, path):
        self.path = Path(path)
        self.tmp = _temp_beside(self.path)
        self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)
        self.indices = []

    def write(self, name, index, labels):
        """Add the (H, W) label map of frame `name` (source index `index`)."""
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(labels), allow_pickle=False)
        self.indices.append(index)

    def finish(self):
        """Write the index, close the archive and give it its final name; returns the path."""
        with self.zip.open("_index.npy", "w") as f:
            np.lib.format.write_array(f, np.asarray(self.indices, np.int64))
        self.zip.close()
        os.replace(self.tmp, self.path)
        return str(self.path)

    def discard(self):
        """Close and delete the unfinished archive."""
        self.zip.close()
        self.tmp.unlink(missing_ok=True)


class Outputs:
    """Everything written per frame, fed by the post-processing thread in frame order.

    video: the overlay MP4 path (None: none). fps: its frame rate. labels_dir: per-frame trainId PNGs
    ({labels_dir}/{name}.png). npz: label maps in one file. bin_frames: source frames per bin of the class shares
    over time. Keeps the pixel count of every class, overall and per bin.
    """

    def __init__(self, metadata, video=None, fps=15.0, labels_dir=None, npz=None, alpha=0.5, side_by_side=False,
                 bin_frames=15):
        if not 0.0 <= alpha <= 1.0:
            raise CirnError(f"--alpha must be between 0 and 1, got {alpha}")
        self.names, self.palette = tuple(metadata.class_names), palette_key(metadata.palette)
        self.lut = colour_lut(self.palette)
        self.alpha, self.side_by_side, self.bin_frames = alpha, side_by_side, max(1, int(bin_frames))
        self.video = VideoOutput(video, fps) if video else None
        self.labels_dir = Path(labels_dir) if labels_dir else None
        self.npz = NpzOutput(npz) if npz else None
        self.counts = np.zeros(len(self.names), np.int64)
        self.label_files = []  # written by this run: deleted again by discard()
        self.bins = {}  # bin -> [frames, (C,) counts]
        self.frames = 0

    def add(self, frame, labels):
        """One frame: `frame` a SourceFrame, `labels` (H, W) uint8 at the model's size (resized back here)."""
        labels = resize_labels(labels, frame.image.shape[:2])
        counts = class_counts(labels, len(self.names))
        self.counts += counts
        entry = self.bins.setdefault(frame.index // self.bin_frames, [0, np.zeros_like(counts)])
        entry[0] += 1
        entry[1] += counts
        if self.labels_dir is not None:
            path = self.labels_dir / f"{frame.name}.png"
            write_label_png(path, labels)
            self.label_files.append(path)
        if self.npz is not None:
            self.npz.write(frame.name, frame.index, labels)
        if self.video is not None:
            shown = overlay(frame.image, labels, self.palette, self.alpha, self.names, counts, self.lut)
            self.video.write(np.hstack([frame.image, shown]) if self.side_by_side else shown)
        self.frames += 1

    def shares(self):
        """{'overall': {class: share}, 'bin_frames', 'over_time': [{'first_frame', 'frames', 'shares'}]}; shares are
        fractions of the pixels, classes never seen left out."""
        def named(counts):
            total = max(int(counts.sum()), 1)
            return {self.names[c]: round(float(counts[c]) / total, 5) for c in np.flatnonzero(counts)}
        over_time = [{"first_frame": b * self.bin_frames, "frames": n, "shares": named(counts)}
                     for b, (n, counts) in sorted(self.bins.items())]
        return {"overall": named(self.counts), "bin_frames": self.bin_frames, "over_time": over_time}

    def finish(self):
        """Close and rename the video and the NPZ; returns {'video', 'npz', 'labels_dir'} (None where not written)."""
        return {"video": self.video.finish() if self.video else None,
                "npz": self.npz.finish() if self.npz else None,
                "labels_dir": str(self.labels_dir) if self.labels_dir else None}

    def discard(self):
        """Delete the unfinished video and NPZ and the label PNGs of this run (after an error)."""
        for writer in (self.video, self.npz):
            if writer is not None:
                writer.discard()
        for path in self.label_files:
            path.unlink(missing_ok=True)
