"""Image sizes on the command line: one parser, one order. `--imgsz 512x256` and `--size 512x256` are WIDTHxHEIGHT,
as video tools write them; code names each size by its order (`size_wh`, `size_hw`)."""
from cirn.common.errors import CirnError


def parse_size_wh(text, option="--imgsz", minimum=8):
    """'WIDTHxHEIGHT' -> (width, height); a CirnError naming `option` when it is not one, or under `minimum`."""
    try:
        width, height = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise CirnError(f"{option} is WIDTHxHEIGHT, e.g. 512x256, not {text!r}") from None
    if width < minimum or height < minimum:
        raise CirnError(f"{option} must be at least {minimum}x{minimum} pixels, got {text}")
    return width, height
