"""Training-side image files: PNG encoding and label reading. The generic file plumbing (atomic writes, read_image,
json_ready) is cirn.common.files."""
import io

import numpy as np
from PIL import Image

from cirn.common.errors import CirnError
from cirn.common.files import atomic_path, atomic_write_bytes, atomic_write_text, json_ready, read_image, write_error

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "json_ready", "png_bytes", "read_image",
           "read_label", "write_error", "write_png"]


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
