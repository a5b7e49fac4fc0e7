"""File plumbing every part of cirn shares: atomic writes, JSON-safe values and image reading with errors that name
the file."""
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from cirn.common.errors import CirnError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # translated (intermediate) images may be JPEG; labels are always PNG
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"


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


def read_image(path):
    """RGB uint8 (H, W, 3); a clear error naming the file when it cannot be read."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise CirnError(f"image {path} does not exist") from None
    except Exception as err:  # PIL raises many types for corrupt files
        raise CirnError(f"cannot read image {path}: {err}; is it a valid image file?") from None
