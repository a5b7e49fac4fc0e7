"""Label maps: what a source's label files hold, and how their values become the trainIds of the model's classes.

A LabelMap reads one label file into (H, W) uint8 trainIds (255 = ignore) and tells which raw values it does not
cover: those are ignored, and counted so that a run can report them (UncoveredTally). Built in (REFERENCE.md):

    cityscapes    Cityscapes labelIds (0..33), single-channel PNG
    gta5          the same ids, as GTA5's palette PNGs store them
    trainids      trainIds 0..18, 255 ignore
    synthia       SYNTHIA-RAND-CITYSCAPES: 16-bit PNG, class id (0..22) in the red channel
    carla         CARLA >= 0.9.14 raw semantic images: the tag in the red channel (G and B: instance ids); tags
                  1..19 are the 19 Cityscapes classes in order, 0 and 20..28 have no Cityscapes class (ignored)
    carla-legacy  CARLA 0.9.5-0.9.13 tags (red channel). Ours: RoadLine is road, Vehicles is car (that version has no
                  truck, bus, train, motorcycle, bicycle nor rider); Other, Ground, Bridge, RailTrack, GuardRail,
                  Static, Dynamic and Water are ignored
    palette       colour-coded PNGs in the Cityscapes palette (black = unlabelled, ignored)

or a YAML file that maps raw values or colours to class names, and may define its own class set:

    read: red                  # value (a single-channel PNG, 8 or 16 bit) | red (the red channel) | rgb (colours)
    classes:                   # optional, in trainId order, name: [R, G, B]; default: Cityscapes' 19 classes
      road: [128, 64, 128]
      car: [0, 0, 142]
    map:                       # raw value, or "R,G,B" with read: rgb -> a class name, or ignore
      1: road
      14: car
      0: ignore
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cirn.common.errors import CirnError

from . import labels as L
from .io import read_label

READS = ("value", "red", "rgb")
IGNORE = L.IGNORE_INDEX
UNCOVERED = -1  # in a lookup table: a raw value the map says nothing about


@dataclass(frozen=True, eq=False)
class LabelMap:
    """How label files of one kind become trainIds. `table`: raw value (int; (R, G, B) for read='rgb') -> trainId
    or 255; values outside it are uncovered. `class_names`/`palette`: the class set the trainIds index."""
    name: str
    read: str
    table: dict
    class_names: tuple = L.CLASS_NAMES
    palette: np.ndarray = field(default_factory=lambda: L.PALETTE, repr=False)

    @property
    def own_classes(self):
        """Whether the map defines a class set other than Cityscapes' 19."""
        return tuple(self.class_names) != L.CLASS_NAMES

    def raw(self, path):
        """The raw values of one label file: (H, W) ints (value, red) or (H, W) packed 0xRRGGBB ints (rgb)."""
        if self.read == "red":
            array = read_label(path, unchanged=True)  # RGB order, 8 or 16 bit
            return array[..., 0] if array.ndim == 3 else array
        return _open_label(path, self._rgb if self.read == "rgb" else self._value)

    def _value(self, img, path):
        if img.mode in ("L", "P", "I", "I;16"):
            return np.asarray(img)  # as stored: palette indices for a palette PNG (GTA5), 16-bit values
        rgb = np.asarray(img.convert("RGB"))
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
            return rgb[..., 0]  # a grey image saved as RGB
        raise CirnError(f"label {path} is a colour image, but label map {self.name!r} reads single-channel values: "
                        "use a map with read: red (the value in the red channel) or read: rgb (colours)")

    @staticmethod
    def _rgb(img, path):
        rgb = np.asarray(img.convert("RGB"), dtype=np.int32)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]

    @property
    def _lut(self):
        """int16 lookup table raw value -> trainId, 255 ignore, -1 uncovered (value and red maps)."""
        lut = self.__dict__.get("_lut_cache")
        if lut is None:
            lut = np.full(65536, UNCOVERED, np.int16)
            for value, trainid in self.table.items():
                lut[value] = trainid
            object.__setattr__(self, "_lut_cache", lut)
        return lut

    def to_trainids(self, raw):
        """(H, W) raw values -> ((H, W) uint8 trainIds, {raw value: pixels} of the values the map does not cover)."""
        raw = np.asarray(raw)
        if self.read == "rgb":
            values, inverse = np.unique(raw, return_inverse=True)  # few colours: map each once
            mapped = np.array([self.table.get(self._key(int(v)), UNCOVERED) for v in values], np.int16)
            ids = mapped[inverse.reshape(raw.shape)]
        else:
            if raw.size and (int(raw.max()) > 65535 or int(raw.min()) < 0):
                raise CirnError(f"label values beyond 0..65535 (found {int(raw.min())}..{int(raw.max())})")
            ids = self._lut[raw]
        missing = ids == UNCOVERED
        uncovered = {}
        if missing.any():
            values, counts = np.unique(raw[missing], return_counts=True)
            uncovered = {self._describe(int(v)): int(c) for v, c in zip(values, counts)}
        return np.where(missing, IGNORE, ids).astype(np.uint8), uncovered

    def read_trainids(self, path, tally=None):
        """(H, W) uint8 trainIds of one label file; uncovered values are ignored and added to `tally`."""
        raw = self.raw(path)  # its errors name the file already
        try:
            trainids, uncovered = self.to_trainids(raw)
        except CirnError as err:
            raise CirnError(f"label {path}: {err}") from None
        if tally is not None:
            tally.add(path, uncovered, trainids.size)
        return trainids

    def _key(self, value):
        return ((value >> 16) & 255, (value >> 8) & 255, value & 255) if self.read == "rgb" else value

    def _describe(self, value):
        """A raw value as a report names it: the number, or 'R,G,B'."""
        return ",".join(map(str, self._key(value))) if self.read == "rgb" else value


def _open_label(path, read):
    """read(PIL image, path) of one label file; a CirnError naming the file when it cannot be read."""
    try:
        with Image.open(path) as img:
            return read(img, path)
    except FileNotFoundError:
        raise CirnError(f"label {path} does not exist") from None
    except CirnError:
        raise
    except Exception as err:
        raise CirnError(f"cannot read label {path}: {err}; is it a valid PNG?") from None


class UncoveredTally:
    """Pixels of values a label map does not cover, over the labels read so far: each value is reported once (the
    first file that holds it), and summary() gives every value's share of all pixels read.

    In a DataLoader worker (report=False) nothing is printed: take() hands what was added since the last take to the
    main process, whose tally merge()s it and reports each value once for the whole run."""

    def __init__(self, map_name):
        self.map_name, self.pixels, self.total, self.report = map_name, {}, 0, True
        self._pending = {"pixels": {}, "total": 0, "first": {}}

    def add(self, path, uncovered, pixels):
        self.merge({"pixels": {str(v): c for v, c in uncovered.items()}, "total": pixels,
                    "first": {str(v): [str(path), 100 * c / max(pixels, 1)] for v, c in uncovered.items()}})

    def merge(self, delta):
        """Add a take() of another process's tally (or one file's counts)."""
        import sys
        self.total += delta["total"]
        self._pending["total"] += delta["total"]
        for value, count in delta["pixels"].items():
            if value not in self.pixels:
                self._pending["first"][value] = delta["first"][value]
                if self.report:
                    path, share = delta["first"][value]
                    print(f"warning: label map {self.map_name!r} does not cover value {value} ({share:.2f}% of "
                          f"{path}); its pixels are ignored", file=sys.stderr, flush=True)
            self.pixels[value] = self.pixels.get(value, 0) + count
            self._pending["pixels"][value] = self._pending["pixels"].get(value, 0) + count

    def take(self):
        """What was added since the last take(): {pixels, total, first} for the main process's merge()."""
        delta, self._pending = self._pending, {"pixels": {}, "total": 0, "first": {}}
        return delta

    def summary(self):
        """{value (as text): share of the pixels read, in percent}."""
        return {v: 100 * c / max(self.total, 1) for v, c in sorted(self.pixels.items())}


# ---------------------------------------------------------------- built-in maps
def _ids(covered, mapping):
    """A table over the raw values `covered` (ignored unless `mapping` gives them a trainId)."""
    table = dict.fromkeys(covered, IGNORE)
    table.update(mapping)
    return table


CITYSCAPES_MAX_LABEL_ID = 33
_LABELIDS = _ids(range(CITYSCAPES_MAX_LABEL_ID + 1), {lid: t for t, lid in enumerate(L.CITYSCAPES_LABEL_IDS)})
CARLA_TAGS = 29  # 0..28 in CARLA >= 0.9.14
# CARLA 0.9.5-0.9.13 tag -> Cityscapes trainId (REFERENCE.md); absent tags of 0..22 are ignored.
CARLA_LEGACY = {1: 2, 2: 4, 4: 11, 5: 5, 6: 0, 7: 0, 8: 1, 9: 8, 10: 13, 11: 3, 12: 7, 13: 10, 18: 6, 22: 9}

# The colours of Cityscapes' classes without a trainId in *_gtFine_color.png files (unlabeled/static, dynamic, ground,
# parking, rail track, guard rail, bridge, tunnel, caravan, trailer): ignored, never reported as uncovered.
CITYSCAPES_VOID_COLOURS = [(0, 0, 0), (111, 74, 0), (81, 0, 81), (250, 170, 160), (230, 150, 140), (180, 165, 180),
                           (150, 100, 100), (150, 120, 90), (0, 0, 90), (0, 0, 110)]

BUILTIN = {
    "cityscapes": LabelMap("cityscapes", "value", _LABELIDS),
    "gta5": LabelMap("gta5", "value", _LABELIDS),
    "trainids": LabelMap("trainids", "value", _ids([IGNORE], {t: t for t in range(L.NUM_CLASSES)})),
    "synthia": LabelMap("synthia", "red", _ids(range(23), L.SYNTHIA_ID_TO_TRAINID)),
    "carla": LabelMap("carla", "red", _ids(range(CARLA_TAGS), {tag: tag - 1 for tag in range(1, 20)})),
    "carla-legacy": LabelMap("carla-legacy", "red", _ids(range(23), CARLA_LEGACY)),
    "palette": LabelMap("palette", "rgb", _ids(CITYSCAPES_VOID_COLOURS, {tuple(int(c) for c in rgb): t
                                                                          for t, rgb in enumerate(L.PALETTE)})),
}
SOURCE_DEFAULTS = {"toy": "gta5", "gta5": "gta5", "synthia": "synthia"}  # data.label_map '' for each data.source


def trainid_map(class_names=L.CLASS_NAMES, palette=L.PALETTE):
    """Labels that hold trainIds of `class_names` already (0..C-1, 255 ignore): pseudo labels, the toy's."""
    return LabelMap("trainids", "value", _ids([IGNORE], {t: t for t in range(len(class_names))}),
                    tuple(class_names), np.asarray(palette, np.uint8))


def load_label_map(spec):
    """The LabelMap a data.label_map / --label-map names: a built-in name or a YAML file."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        if path.suffix.lower() in (".yaml", ".yml"):
            raise CirnError(f"label map file {path} does not exist")
        raise CirnError(f"unknown label map {spec!r}: built in are {', '.join(BUILTIN)}; or give a YAML file "
                        "(see cirn/train/labelmaps.py)")
    return _read_yaml_map(path)


def _read_yaml_map(path):
    import yaml
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CirnError(f"label map {path} is not valid YAML ({first}): fix the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("map"), dict) or not data["map"]:
        raise CirnError(f"label map {path} needs a 'map:' section of raw value (or \"R,G,B\") -> class name or ignore")
    unknown = sorted(set(data) - {"read", "classes", "map"})
    if unknown:
        raise CirnError(f"label map {path}: unknown key {unknown[0]!r}; the keys are read, classes and map")
    read = data.get("read", "value")
    if read not in READS:
        raise CirnError(f"label map {path}: read is {read!r}, expected one of {', '.join(READS)}")
    names, palette = L.CLASS_NAMES, L.PALETTE
    if data.get("classes") is not None:
        names, palette = _read_classes(path, data["classes"])
    index = {name: t for t, name in enumerate(names)}
    table = {}
    for raw, target in data["map"].items():
        key = _parse_key(path, raw, read)
        if not isinstance(target, str):
            raise CirnError(f"label map {path} maps {raw} to {target!r}: each value must be one class name (or "
                            "ignore)")
        if target == "ignore":
            table[key] = IGNORE
        elif target in index:
            table[key] = index[target]
        else:
            raise CirnError(f"label map {path} maps {raw} to {target!r}, which is not a class: the classes are "
                            f"{', '.join(names)} (or ignore)")
    return LabelMap(path.name, read, table, tuple(names), palette)


def _read_classes(path, classes):
    if not isinstance(classes, dict) or not classes:
        raise CirnError(f"label map {path}: classes must map each class name to its colour [R, G, B]")
    if len(classes) > 254:
        raise CirnError(f"label map {path} defines {len(classes)} classes: at most 254 (trainIds are 8-bit, 255 is "
                        "ignore)")
    palette = []
    for name, colour in classes.items():
        if not isinstance(name, str) or name == "ignore":
            raise CirnError(f"label map {path}: {name!r} cannot be a class name")
        if (not isinstance(colour, (list, tuple)) or len(colour) != 3
                or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour)):
            raise CirnError(f"label map {path}: the colour of class {name!r} must be [R, G, B] in 0..255, got "
                            f"{colour!r}")
        palette.append(colour)
    return tuple(classes), np.asarray(palette, np.uint8)


def _parse_key(path, raw, read):
    if read == "rgb":
        parts = str(raw).replace(" ", "").split(",")
        if len(parts) != 3 or not all(p.isdigit() and int(p) <= 255 for p in parts):
            raise CirnError(f"label map {path}: with read: rgb each key is a colour \"R,G,B\", got {raw!r}")
        return tuple(int(p) for p in parts)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 65535:
        raise CirnError(f"label map {path}: with read: {read} each key is a label value 0..65535, got {raw!r}")
    return raw


# ---------------------------------------------------------------- the run's class set
def source_label_map(cfg_data):
    """The label map of the run's source labels: data.label_map, else the source's own format."""
    spec = cfg_data.label_map or SOURCE_DEFAULTS.get(cfg_data.source)
    if not spec:
        raise CirnError(f"data.source={cfg_data.source} needs a label map telling what its label files hold: pass "
                        f"--label-map NAME|FILE (built in: {', '.join(BUILTIN)})")
    return load_label_map(spec)


def resolve_classes(cfg):
    """cfg with the model's class set following the source label map's: model.class_names, class_colors and
    num_classes set from a map with its own classes (Cityscapes' 19 otherwise, as configured)."""
    from .config import merge
    if not cfg.data.label_map:
        return cfg
    label_map = source_label_map(cfg.data)
    if not label_map.own_classes:
        if cfg.model.class_names:
            return merge(cfg, {"model": {"class_names": [], "class_colors": [], "num_classes": L.NUM_CLASSES}})
        return cfg
    if cfg.data.protocol != 19:
        raise CirnError(f"label map {label_map.name} defines its own classes: every one is scored, so "
                        f"data.protocol must be 19 (all classes), not {cfg.data.protocol}")
    return merge(cfg, {"model": {"class_names": list(label_map.class_names), "num_classes": len(label_map.class_names),
                                 "class_colors": label_map.palette.tolist()}})


def class_set(cfg_model):
    """(class names, (C, 3) uint8 palette) of a model config: its own class set, else Cityscapes' (made-up colours
    past 19 classes)."""
    from cirn.common.metadata import made_up_palette
    if cfg_model.class_names:
        return tuple(cfg_model.class_names), np.asarray(cfg_model.class_colors, np.uint8).reshape(-1, 3)
    return default_class_names(cfg_model.num_classes), made_up_palette(cfg_model.num_classes, L.PALETTE)


def default_class_names(num_classes):
    """Cityscapes' 19 names for a 19-class model without its own class set; 'class i' for another count."""
    return L.CLASS_NAMES if num_classes == L.NUM_CLASSES else tuple(f"class {i}" for i in range(num_classes))


def checkpoint_class_set(state):
    """(class names, (C, 3) uint8 palette) of a loaded checkpoint: its config's class set (older checkpoints have
    none: Cityscapes')."""
    from .config import ModelConfig
    model = state.get("config", {}).get("model", {})
    return class_set(ModelConfig(num_classes=state["model_meta"]["num_classes"],
                                 class_names=tuple(model.get("class_names") or ()),
                                 class_colors=tuple(model.get("class_colors") or ())))
