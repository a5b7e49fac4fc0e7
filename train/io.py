"""File plumbing shared by every stage: atomic writes and image reading with errors that name the file."""
import io
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import CirnError


@contextmanager
def atomic_path(path):
    """Yield a temp path beside `path`; rename it to `path` only if the block finishes.

    A crash, Ctrl-C or full disk never leaves a partial file under the final name. An OSError (disk full, read-only
    or missing permission) becomes a CirnError naming the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
        os.close(fd)
    except OSError as err:
        raise write_error(path, err) from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        raise


def write_error(path, err):
    """A CirnError for a failed write of `path`: what the system said and what to do."""
    return CirnError(f"cannot write {path}: {getattr(err, 'strerror', None) or err}; free some space, check the "
                     "folder is writable, or choose another output folder. Nothing was written under that name.")


def atomic_write_bytes(path, data):
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode())


def json_ready(value):
    """Nested dicts/lists with NaN/inf as None and numpy scalars as Python numbers, for json.dumps."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def png_bytes(array):
    """Encode a uint8 (H, W[, 3]) or uint16 (H, W[, 3]) array as PNG bytes, deterministically."""
    array = np.ascontiguousarray(array)
    buf = io.BytesIO()
    if array.dtype == np.uint16 and array.ndim == 3:
        # PIL cannot write 16-bit RGB; OpenCV can (it expects BGR order).
        import cv2
        ok, enc = cv2.imencode(".png", array[..., ::-1])
        if not ok:
            raise CirnError("could not encode a 16-bit PNG")
        return enc.tobytes()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path, array):
    atomic_write_bytes(path, png_bytes(array))


def read_image(path):
    """RGB uint8 (H, W, 3); a clear error naming the file when it cannot be read."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise CirnError(f"image {path} does not exist") from None
    except Exception as err:  # PIL raises many types for corrupt files
        raise CirnError(f"cannot read image {path}: {err}; is it a valid image file?") from None


def read_label(path, unchanged=False):
    """A label PNG as stored: (H, W) uint8 ids; with `unchanged` the raw array (SYNTHIA: 16-bit, RGB order)."""
    try:
        if unchanged:
            import cv2
            array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if array is None:
                raise ValueError("OpenCV could not decode it")
            return array[..., 2::-1] if array.ndim == 3 else array  # BGR(A) -> RGB
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                img = img.convert("L")
            return np.asarray(img)
    except FileNotFoundError:
        raise CirnError(f"label {path} does not exist") from None
    except Exception as err:
        raise CirnError(f"cannot read label {path}: {err}; is it a valid PNG?") from None
