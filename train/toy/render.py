"""The toy's renderer: render_frame(scene, size_wh, style, ...) projects a Scene through a level pinhole camera and
paints far to near (ground, backdrop, street-side lots, then things by depth), the RGB image and the trainId map
with the same polygons, so the labels are exact. Moving camera_forward drives down the same street.

- style 'source': saturated flat colours, flat shading, hard edges, no noise.
- style 'target': the same hues desaturated, warmer and hazier, a whitish sky, textures (asphalt grain, leafy
  noise), soft cast shadows, an illumination gradient, blur, vignetting, sensor noise, JPEG artefacts and an
  ego-car bonnet labelled ignore.
- style 'dusk': the target's camera at dusk, a second target look: the same geometry, labels and finishing steps
  with other values (_CameraLook): a darker, duller palette, a low warm sun on lit faces and blue shade, violet
  haze, a deep blue sky glowing orange toward the horizon, blue cast shadows, a steeper illumination gradient,
  stronger vignetting and blur, more sensor noise and lower JPEG quality.
Any scene renders in any style, which gives paired images for checking a translator.
"""
import math
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cirn.common.errors import CirnError
from ..labels import IGNORE_INDEX
from .scene import (BICYCLE, BUILDING, BUS, CAMERA_HEIGHT, CAR, FENCE, LIGHT, MOTORCYCLE, PERSON, POLE, RIDER, ROAD,
                    SIDEWALK, SIGN, SKY, TERRAIN, TRAIN, TRUCK, VEGETATION, WALL, Box)

HOOD = (38, 40, 44)


@dataclass(frozen=True)
class Camera:
    """A level pinhole camera: focal length and principal point in pixels, position in world metres."""
    focal: float
    cx: float
    cy: float
    x: float
    y: float
    z: float
    near: float = 0.5

    def project(self, points):
        """World points -> image points of the polygon clipped to the near plane; [] when nothing is in front."""
        rel = [(x - self.x, y - self.y, z - self.z) for x, y, z in points]
        if min(p[2] for p in rel) < self.near:
            rel = _clip_near(rel, self.near)
        f, cx, cy = self.focal, self.cx, self.cy
        return [(cx + f * x / z, cy - f * y / z) for x, y, z in rel]


def _clip_near(points, near):
    """Sutherland-Hodgman against the plane z = near (camera coordinates)."""
    out = []
    for k, p in enumerate(points):
        q = points[k - 1]
        if (p[2] >= near) != (q[2] >= near):
            t = (near - q[2]) / (p[2] - q[2])
            out.append(tuple(a + t * (b - a) for a, b in zip(q, p, strict=True)))
        if p[2] >= near:
            out.append(p)
    return out


@dataclass(frozen=True)
class Frame:
    image: np.ndarray       # (H, W, 3) uint8 RGB
    labels: np.ndarray      # (H, W) uint8 trainIds, 255 = ignore
    instances: np.ndarray   # (H, W) uint16 instance ids (0 = stuff), or None


@dataclass(frozen=True)
class _CameraLook:
    """The values of a camera-like look: how _grade paints base colours and _finish_like_a_camera finishes them.
    Pairs (low, high) are the ranges each frame draws its shot from."""
    saturation: float   # colourfulness kept from the base colour
    gain: tuple         # (R, G, B) white balance of the light
    sun_tint: tuple     # (R, G, B) tint of sunlit faces ...
    shade_tint: tuple   # ... and of faces in shade, blended by the face's shade
    exposure: float     # brightness of the painted colours
    lift: float         # black level
    haze: tuple         # the colour far things fade into ...
    haze_metres: float  # ... with this distance scale
    sky: tuple          # the sky's colour ...
    sky_keep: float     # ... keeping this much of the scene's own sky colour
    glow: tuple         # the colour the sky lightens toward, near the horizon and in clouds
    glow_rate: float    # how much it lightens at the horizon ...
    cloud_rate: float   # ... and in clouds ...
    glow_max: float     # ... at most
    shadow: tuple       # (R, G, B) how much a cast shadow darkens each channel
    light: tuple        # strength of the illumination gradient across the frame
    balance: tuple      # the shot's overall exposure
    blur: tuple         # lens blur sigma in pixels at 256 pixels wide
    vignette: tuple     # corner darkening
    noise: tuple        # sensor noise std, in 8-bit levels
    jpeg: tuple         # JPEG quality (high exclusive)


# The original target look, frozen (its tints of 1.0 leave every value as it was before looks were parameters).
CAMERA = _CameraLook(saturation=0.75, gain=(1.06, 1.0, 0.9), sun_tint=(1.0, 1.0, 1.0), shade_tint=(1.0, 1.0, 1.0),
                     exposure=0.86, lift=12, haze=(176, 180, 186), haze_metres=250, sky=(198, 204, 210), sky_keep=0.3,
                     glow=(235, 235, 235), glow_rate=0.45, cloud_rate=0.25, glow_max=0.85, shadow=(0.42, 0.42, 0.42),
                     light=(0.1, 0.3), balance=(0.85, 1.1), blur=(0.5, 0.9), vignette=(0.25, 0.4), noise=(2, 5),
                     jpeg=(60, 81))
# The second target look: the same camera at dusk, dimmer, with a low warm sun, blue shade and a noisier sensor.
DUSK = _CameraLook(saturation=0.65, gain=(0.94, 0.92, 1.04), sun_tint=(1.26, 0.98, 0.7), shade_tint=(0.8, 0.9, 1.2),
                   exposure=0.74, lift=8, haze=(120, 100, 128), haze_metres=160, sky=(52, 62, 116), sky_keep=0.15,
                   glow=(250, 156, 86), glow_rate=0.9, cloud_rate=0.3, glow_max=0.92, shadow=(0.56, 0.5, 0.3),
                   light=(0.3, 0.5), balance=(0.85, 1.05), blur=(0.9, 1.3), vignette=(0.4, 0.55), noise=(7, 11),
                   jpeg=(40, 56))


@dataclass(frozen=True)
class _Style:
    focal: float                # focal length as a fraction of the width
    horizon: float              # horizon row as a fraction of the height
    shading: float              # how strongly face orientation changes brightness
    camera: _CameraLook | None  # finish like a camera (textures, shadows, blur, noise, JPEG, hood) with this look


# The target styles share the geometry (focal, horizon, bonnet), so a scene has the same labels in each.
STYLES = {"source": _Style(focal=0.75, horizon=0.45, shading=0.6, camera=None),
          "target": _Style(focal=0.85, horizon=0.45, shading=1.0, camera=CAMERA),
          "dusk": _Style(focal=0.85, horizon=0.45, shading=1.3, camera=DUSK)}
LIT, UNLIT, FRONT, TOP = 1.0, 0.62, 0.82, 1.12


@lru_cache(maxsize=65536)
def _grade(rgb, label, shade, depth, camera, strength):
    """A base colour as a style paints it: the source (camera None) saturates, a camera look desaturates, tints
    and hazes.

    depth (whole metres) only matters to a camera's haze.
    """
    r, g, b = rgb
    mean = (r + g + b) / 3
    sunlit = min(1.0, max(0.0, (shade - UNLIT) / (LIT - UNLIT)))
    shade = 1 + (shade - 1) * strength
    if camera is None:
        return tuple(int(min(255, max(0, (mean + (c - mean) * 1.25) * shade * 1.05))) for c in rgb)
    tint = _TARGET_TINT.get(label, (1.0, 1.0, 1.0))
    light = [s + (u - s) * sunlit for u, s in zip(camera.sun_tint, camera.shade_tint, strict=True)]
    haze = 1 - math.exp(-depth / camera.haze_metres)
    return tuple(int(min(255, max(0, ((mean + (c - mean) * camera.saturation) * shade * t * k * q * camera.exposure
                                      + camera.lift) * (1 - haze) + h * haze)))
                 for c, t, k, q, h in zip(rgb, tint, camera.gain, light, camera.haze, strict=True))


# Class-specific shifts a global colour transfer cannot undo: duller foliage, drier grass, browner roads.
_TARGET_TINT = {VEGETATION: (0.97, 0.9, 0.8), TERRAIN: (1.05, 0.95, 0.8), ROAD: (1.02, 1.0, 0.94)}


def _sky_colour(base, camera):
    if camera is None:
        return _grade(base, SKY, 1.0, 0, None, 1.0)
    keep = camera.sky_keep
    return tuple(int(keep * c + (1 - keep) * o) for c, o in zip(base, camera.sky, strict=True))


class _Canvas:
    """The images painted together: RGB, trainIds, and where asked instance ids and a shadow mask."""

    def __init__(self, size_wh, sky, instances, shadows):
        self.rgb = Image.new("RGB", size_wh, sky)
        self.labels = Image.new("L", size_wh, SKY)
        self.instances = Image.new("I", size_wh, 0) if instances else None
        self.shadow = Image.new("L", size_wh, 0) if shadows else None
        self._pens = [(ImageDraw.Draw(self.rgb), "rgb"), (ImageDraw.Draw(self.labels), "label")]
        if instances:
            self._pens.append((ImageDraw.Draw(self.instances), "instance"))
        if shadows:
            self._pens.append((ImageDraw.Draw(self.shadow), "lit"))

    def fill(self, xy, rgb, label, instance=0):
        """Paint a polygon into every image; it also covers any ground shadow painted before it."""
        if len(xy) < 3:
            return
        values = {"rgb": rgb, "label": label, "instance": instance, "lit": 0}
        for pen, key in self._pens:
            pen.polygon(xy, fill=values[key])

    def darken(self, xy):
        if self.shadow is not None and len(xy) >= 3:
            self._pens[-1][0].polygon(xy, fill=255)


def render_frame(scene, size_wh, style="source", camera_forward=0.0, camera_lateral=None, instances=False, rng=None):
    """Paint `scene` as seen from camera_forward metres down the street, camera_lateral metres right of the centre
    line (default: the scene's lane). size_wh = (width, height); style 'source' (game-like), 'target' (camera-like)
    or 'dusk' (the camera at dusk; the same labels as 'target'); rng drives a camera's noise, default a fixed one.
    Returns a Frame; instance ids only when asked.
    """
    if style not in STYLES:
        raise CirnError(f"unknown toy style {style!r}: expected one of {sorted(STYLES)}")
    look = STYLES[style]
    width, height = size_wh
    lateral = scene.ego_x if camera_lateral is None else camera_lateral
    cam = Camera(look.focal * width, width / 2, look.horizon * height, lateral, CAMERA_HEIGHT, camera_forward)
    camera = look.camera
    canvas = _Canvas(size_wh, _sky_colour(scene.sky, camera), instances, shadows=camera is not None)

    def grade(rgb, label, shade, depth):
        return _grade(rgb, label, shade, round(depth) if camera is not None else 0, camera, look.shading)

    for poly in scene.ground:
        canvas.fill(cam.project(poly.points), grade(poly.colour, poly.label, poly.shade, 0.0), poly.label)
    for points in scene.shadows:
        canvas.darken(cam.project(points))
    for thing in sorted(scene.things, key=lambda t: (t.layer, -t.z)):
        depth = max(thing.z - cam.z, 0.0)
        for part in thing.parts:
            if isinstance(part, Box):
                _paint_box(canvas, cam, part, depth, scene.sun, grade)
            else:
                canvas.fill(cam.project(part.points), grade(part.colour, part.label, part.shade, depth), part.label,
                            part.instance)
    if camera is not None:
        canvas.fill(_hood(width, height), HOOD, IGNORE_INDEX)

    image = np.asarray(canvas.rgb)
    labels = np.asarray(canvas.labels)
    if camera is not None:
        image = _finish_like_a_camera(image, labels, canvas.shadow, rng or np.random.default_rng(0), look.horizon,
                                      camera)
    ids = np.asarray(canvas.instances).astype(np.uint16) if instances else None
    return Frame(image, labels, ids)


def _paint_box(canvas, cam, box, depth, sun, grade):
    """The faces of a box the camera sees (they never overlap), each followed by its decorations."""
    (x0, y0, z0), (x1, y1, z1) = box.lo, box.hi
    faces = []
    if cam.x < x0:
        faces.append((_x_face(x0, y0, y1, z0, z1), LIT if sun < 0 else UNLIT, box.side,
                      lambda u, v, x=x0: (x, v, z0 + u)))
    if cam.x > x1:
        faces.append((_x_face(x1, y0, y1, z0, z1), LIT if sun > 0 else UNLIT, box.side,
                      lambda u, v, x=x1: (x, v, z0 + u)))
    if cam.y > y1:
        faces.append((((x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)), TOP, (), None))
    if cam.z < z0:
        faces.append((((x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)), FRONT, box.front,
                      lambda u, v: (x0 + u, v, z0)))
    for points, shade, decor, to_world in faces:
        canvas.fill(cam.project(points), grade(box.colour, box.label, shade, depth), box.label, box.instance)
        for label, colour, shape in decor:
            xy = cam.project([to_world(u, v) for u, v in shape])
            if _covers_a_pixel(xy):  # far windows and wheels shrink below a pixel: skip them
                canvas.fill(xy, grade(colour, label, shade, depth), label, box.instance)


def _covers_a_pixel(xy):
    us, vs = [u for u, _ in xy], [v for _, v in xy]
    return len(xy) >= 3 and (max(us) - min(us) >= 1 or max(vs) - min(vs) >= 1)


def _x_face(x, y0, y1, z0, z1):
    return ((x, y0, z0), (x, y1, z0), (x, y1, z1), (x, y0, z1))


def _hood(width, height):
    """The ego car's bonnet along the bottom edge, as in every Cityscapes frame."""
    top = height * 0.905
    points = [(width * k / 8, top + (height - top) * 0.45 * (2 * k / 8 - 1) ** 2) for k in range(9)]
    return [(0, height), *points, (width, height)]


# Per-class texture strengths of the camera look: fine grain and blotches (relative brightness, std).
_GRAIN = np.zeros(256, np.float32)
_BLOTCH = np.zeros(256, np.float32)
for _label, _grain, _blotch in ((ROAD, 0.08, 0.07), (SIDEWALK, 0.06, 0.06), (BUILDING, 0.04, 0.05),
                                (WALL, 0.07, 0.1), (FENCE, 0.05, 0.06), (POLE, 0.03, 0.03), (LIGHT, 0.02, 0.02),
                                (SIGN, 0.02, 0.03), (VEGETATION, 0.22, 0.2), (TERRAIN, 0.15, 0.12),
                                (PERSON, 0.04, 0.05), (RIDER, 0.04, 0.05), (CAR, 0.03, 0.06), (TRUCK, 0.03, 0.06),
                                (BUS, 0.03, 0.06), (TRAIN, 0.03, 0.06), (MOTORCYCLE, 0.03, 0.05),
                                (BICYCLE, 0.03, 0.05), (IGNORE_INDEX, 0.02, 0.12)):
    _GRAIN[_label], _BLOTCH[_label] = _grain, _blotch


def _smooth_noise(rng, height, width, cell):
    """Zero-mean, unit-std noise with blobs about `cell` pixels across."""
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-6)


def _finish_like_a_camera(image, labels, shadow, rng, horizon, camera):
    """Textures, sky, soft shadows, light, white balance, blur, vignette, noise and JPEG, with `camera`'s values.
    Every look draws the same sequence from rng (the clip's _ClipCamera relies on the sizes of the draws)."""
    height, width = labels.shape
    scale = width / 256  # the look was tuned at 256 pixels wide; blobs and blur keep their size relative to it
    img = image.astype(np.float32)
    grain = rng.standard_normal((height, width)).astype(np.float32)
    blotch = _smooth_noise(rng, height, width, cell=max(2, round(6 * scale)))
    img *= (1 + _GRAIN[labels] * grain + _BLOTCH[labels] * blotch)[..., None]

    rows = np.arange(height, dtype=np.float32)[:, None] / max(horizon * height, 1)
    sky = (labels == SKY)[..., None]
    clouds = np.clip(_smooth_noise(rng, height, width, cell=max(2, round(16 * scale))), 0, None)[..., None]
    toward_glow = np.clip(camera.glow_rate * rows[..., None] + camera.cloud_rate * clouds, 0, camera.glow_max)
    glow = np.asarray(camera.glow, np.float32)  # the sky lightens toward it near the horizon and in clouds
    img = np.where(sky, img + (glow - img) * toward_glow, img)

    soft = np.asarray(shadow.filter(ImageFilter.GaussianBlur(1.5 * scale)), np.float32) / 255
    img *= 1 - soft[..., None] * np.asarray(camera.shadow, np.float32)

    angle, strength = rng.uniform(0, 2 * math.pi), rng.uniform(*camera.light)
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    light = 1 + strength * (math.cos(angle) * xs + math.sin(angle) * ys)
    balance = rng.uniform(*camera.balance) * (1 + rng.normal(0, 0.03, 3))
    img *= light[..., None] * balance.astype(np.float32)

    lens = ImageFilter.GaussianBlur(rng.uniform(*camera.blur) * scale)
    img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(lens), np.float32)
    vignette = 1 - rng.uniform(*camera.vignette) * (xs ** 2 + ys ** 2) * 2
    img *= vignette[..., None]
    img += rng.normal(0, rng.uniform(*camera.noise), img.shape).astype(np.float32)
    return _jpeg(np.clip(img, 0, 255).astype(np.uint8), quality=int(rng.integers(*camera.jpeg)))


def _jpeg(image, quality):
    """Round-trip through JPEG in memory: the blocky artefacts real datasets carry."""
    buf = BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"))
