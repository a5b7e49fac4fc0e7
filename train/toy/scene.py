"""The toy's scene grammar: a straight street with lanes, sidewalks, a junction, lots with buildings, walls, fences
and parks, street furniture, people, riders and vehicles, as boxes and flat polygons in world metres
(x right, y up, z down the street; the camera's lane is at x = ego_x).

sample_scene(rng, mix) draws a Scene. The mix is the one domain difference at this stage: the target has more cars,
people and trees, fewer trucks, buses and trains.
"""
import itertools
import math
from dataclasses import dataclass

import numpy as np

from cirn.common.errors import CirnError

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK,
 BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)

LANE = 3.3  # metres
PARKING = 2.3
CAMERA_HEIGHT = 1.6
SCENE_LENGTH = 160.0

# Natural base colours; each instance picks one and jitters it, then a style turns it into its domain's look.
COLOURS = {
    "asphalt": ((84, 82, 92), (74, 74, 82), (94, 90, 96)),
    "paint": ((236, 236, 226),),
    "paving": ((172, 162, 156), (150, 148, 152), (184, 172, 160)),
    "grass": ((112, 160, 68), (128, 170, 78), (146, 152, 86)),
    "facade": ((198, 178, 146), (162, 86, 62), (150, 150, 154), (220, 208, 178), (118, 128, 152), (198, 158, 96)),
    "glass": ((62, 84, 114), (50, 62, 84)),
    "concrete": ((150, 146, 138), (128, 124, 120), (112, 116, 134)),
    "fence": ((152, 110, 72), (72, 104, 82), (124, 122, 126), (208, 206, 196)),
    "metal": ((120, 122, 128), (88, 94, 102), (62, 82, 70)),
    "leaves": ((62, 124, 42), (84, 142, 52), (52, 104, 46)),
    "bark": ((94, 68, 46),),
    "sky": ((110, 162, 228),),
    "skin": ((232, 192, 162), (192, 142, 112), (124, 88, 62)),
    "clothes": ((40, 52, 92), (32, 32, 36), (152, 40, 40), (202, 202, 198), (60, 112, 70), (182, 152, 102),
                (92, 92, 102), (212, 172, 40)),
    "car": ((182, 32, 32), (40, 62, 152), (224, 224, 224), (32, 32, 36), (162, 166, 174), (224, 192, 42),
            (40, 112, 62)),
    "truck": ((226, 226, 222), (196, 60, 40), (52, 82, 152), (230, 150, 40)),
    "bus": ((232, 184, 32), (192, 42, 42), (42, 92, 172), (60, 140, 90)),
    "train": ((202, 42, 42), (232, 204, 62), (52, 102, 182), (220, 220, 214)),
    "bike": ((212, 42, 42), (42, 122, 212), (32, 32, 36), (232, 212, 42), (222, 222, 222)),
    "housing": ((42, 42, 44), (212, 172, 42)),
    "sign_red": ((206, 34, 34),),
    "sign_blue": ((34, 72, 176),),
    "sign_yellow": ((236, 196, 40),),
    "sign_white": ((238, 238, 236),),
}
TYRE = (28, 28, 30)
HUB = (120, 122, 128)
TAIL_LAMP = (220, 30, 30)
HEAD_LAMP = (240, 236, 200)
PLATE = (230, 230, 230)



# ---------------------------------------------------------------- scene description
@dataclass(frozen=True)
class Poly:
    """A flat polygon: world points in metres, painted as is."""
    label: int
    colour: tuple
    points: tuple
    shade: float = 0.9
    instance: int = 0


@dataclass(frozen=True)
class Box:
    """An axis-aligned box. Only the faces the camera sees are painted, each followed by its decorations.

    Decorations are (label, colour, ((u, v), ...)) with v = height y in metres; on the near face (z = lo[2]) u runs
    along x from lo[0], on the x faces along z from lo[2].
    """
    label: int
    colour: tuple
    lo: tuple
    hi: tuple
    front: tuple = ()
    side: tuple = ()
    instance: int = 0


@dataclass(frozen=True)
class Thing:
    """Parts painted as a unit, in order. Things are painted by layer, then far (large z) to near."""
    z: float
    parts: tuple
    layer: int = 2  # 0 backdrop, 1 street-side lots, 2 things in the street


@dataclass
class Scene:
    """A sampled street: everything render_frame needs, in world metres."""
    mix: str
    sky: tuple
    sun: int         # +1: sunlight from the right (+x), -1: from the left
    ego_x: float     # lateral position of the camera's lane
    length: float
    ground: list     # Polys on y = 0, painted in order
    shadows: list    # ground polygons ((x, 0, z), ...) darkened by the target style
    things: list


@dataclass(frozen=True)
class Mix:
    """How often each kind of object appears: the one thing the two domains' scenes differ in."""
    cars: float           # mean moving cars
    parked: float         # chance of parking strips (each spot then filled with chance 0.7)
    persons: float        # mean pedestrians
    trees: float          # chance that a sidewalk is tree-lined
    parks: float          # weight of park lots (buildings weigh 0.6)
    truck: float          # chance of a truck in a scene
    bus: float
    train: float
    cyclists: float       # mean riders on bicycles
    motorcyclists: float
    parked_bikes: float   # mean parked bicycles and motorcycles


MIXES = {
    "source": Mix(cars=3.0, parked=0.4, persons=3.0, trees=0.35, parks=0.15, truck=0.55, bus=0.5, train=0.45,
                  cyclists=0.8, motorcyclists=0.8, parked_bikes=1.0),
    "target": Mix(cars=5.0, parked=0.7, persons=5.5, trees=0.7, parks=0.3, truck=0.3, bus=0.3, train=0.35,
                  cyclists=0.9, motorcyclists=0.6, parked_bikes=1.4),
}


# ---------------------------------------------------------------- 2-D shapes (u across, v up, metres)
def _rect(u0, v0, u1, v1):
    return ((u0, v0), (u1, v0), (u1, v1), (u0, v1))


def _bar(p, q, width):
    """A straight limb or tube from p to q."""
    du, dv = q[0] - p[0], q[1] - p[1]
    norm = math.hypot(du, dv) or 1.0
    nu, nv = -dv / norm * width / 2, du / norm * width / 2
    return ((p[0] + nu, p[1] + nv), (q[0] + nu, q[1] + nv), (q[0] - nu, q[1] - nv), (p[0] - nu, p[1] - nv))


def _ellipse(cu, cv, ru, rv, n=12, radii=None):
    """An ellipse as an n-gon; `radii` (n factors) makes it ragged, like a tree crown."""
    radii = [1.0] * n if radii is None else radii
    return tuple((cu + ru * r * math.cos(2 * math.pi * k / n), cv + rv * r * math.sin(2 * math.pi * k / n))
                 for k, r in enumerate(radii))


def _ring(cu, cv, r, width, n=12):
    """An annulus as one polygon: the outer circle, a zero-width cut, the inner circle backwards."""
    def circle(radius, ks):
        return [(cu + radius * math.cos(2 * math.pi * k / n), cv + radius * math.sin(2 * math.pi * k / n)) for k in ks]
    return tuple(circle(r, range(n + 1)) + circle(r - width, range(n, -1, -1)))


def _wheels(label, us, v, r):
    return tuple((label, TYRE, _ellipse(u, v, r, r, 10)) for u in us)


def _facing(shape, x, z, flip=1):
    """Stand a 2-D shape in the plane z = const, facing the camera; u along x."""
    return tuple((x + flip * u, v, z) for u, v in shape)


def _along(shape, x, z, flip=1):
    """Stand a 2-D shape in the plane x = const, along the street; u along z."""
    return tuple((x, v, z + flip * u) for u, v in shape)


def _ground(x0, x1, z0, z1):
    return ((x0, 0.0, z0), (x1, 0.0, z0), (x1, 0.0, z1), (x0, 0.0, z1))


def _ground_ellipse(x, z, rx, rz, n=10):
    return tuple((x + rx * math.cos(2 * math.pi * k / n), 0.0, z + rz * math.sin(2 * math.pi * k / n))
                 for k in range(n))


def _scaled(rgb, factor):
    return tuple(min(255, int(c * factor)) for c in rgb)


# ---------------------------------------------------------------- scene sampling
def sample_scene(rng, mix="source", length=SCENE_LENGTH):
    """Draw one street from the shared grammar with a domain's class mix ('source' or 'target')."""
    if mix not in MIXES:
        raise CirnError(f"unknown toy mix {mix!r}: expected one of {sorted(MIXES)}")
    return _Sampler(rng, mix, length).scene()


class _Sampler:
    """Builds one Scene; each method adds one kind of object with the shared grammar."""

    def __init__(self, rng, mix, length):
        self.rng, self.mix_name, self.mix, self.length = rng, mix, MIXES[mix], length
        self.ground, self.shadows, self.things = [], [], []
        self.ids = itertools.count(1)
        self.occupied = {}  # lane x -> [(z0, z1)] taken by vehicles
        self.sun = 1 if self.chance(0.5) else -1
        self.lanes = 1 if self.chance(0.55) else 2
        self.parking = self.chance(self.mix.parked)
        self.road = self.lanes * LANE + self.parking * PARKING  # half-width, centre line to kerb
        self.sidewalk = {-1: self.u(2.5, 5.0), 1: self.u(2.5, 5.0)}
        self.ego_x = LANE * (int(rng.integers(self.lanes)) + 0.5)
        self.crossing = self.u(18, 55) if self.chance(0.55) else None  # near z of a cross street
        self.cross_width = self.u(9, 14)

    def scene(self):
        self.street()
        for side in (-1, 1):
            self.lots(side)
            self.sidewalk_furniture(side)
        self.traffic_lights_and_signs()
        self.traffic()
        self.pedestrians()
        self.backdrop()
        return Scene(self.mix_name, self.pick("sky"), self.sun, self.ego_x, self.length, self.ground, self.shadows,
                     self.things)

    # -- helpers
    def pick(self, material):
        """One of a material's colours with a small per-instance jitter."""
        options = COLOURS[material]
        base = options[self.rng.integers(len(options))]
        shift = self.rng.integers(-8, 9)
        return tuple(min(255, max(0, int(c + shift + self.rng.integers(-4, 5)))) for c in base)

    def u(self, lo, hi):
        return float(self.rng.uniform(lo, hi))

    def chance(self, p):
        return self.rng.random() < p

    def add(self, z, parts, layer=2):
        self.things.append(Thing(float(z), tuple(parts), layer))

    def in_crossing(self, z0, z1, margin=0.0):
        c = self.crossing
        return c is not None and z1 > c - margin and z0 < c + self.cross_width + margin

    def reserve(self, lane, z0, z1):
        """Claim [z0, z1] of a lane for a vehicle; False when it overlaps one already there."""
        spans = self.occupied.setdefault(round(lane, 1), [])
        if any(z1 + 2 > a and z0 - 2 < b for a, b in spans):
            return False
        spans.append((z0, z1))
        return True

    def free_spot(self, lane, length, lo, hi, tries):
        """A near z in [lo, hi] where a vehicle of `length` fits in the lane, or None."""
        for _ in range(tries):
            z0 = self.u(lo, hi)
            if self.reserve(lane, z0, z0 + length):
                return z0
        return None

    def outer_x(self, side):
        """x of the sidewalk's outer edge, where the lots begin."""
        return side * (self.road + self.sidewalk[side])

    # -- ground
    def street(self):
        back, end = -30.0, self.length + 10
        grass, paving, asphalt, paint = (self.pick(m) for m in ("grass", "paving", "asphalt", "paint"))
        self.ground.append(Poly(TERRAIN, grass, _ground(-120, 120, back, end), 1.0))
        for side in (-1, 1):
            x0, x1 = sorted((side * self.road, self.outer_x(side)))
            self.ground.append(Poly(SIDEWALK, paving, _ground(x0, x1, back, end), 1.0))
            if self.chance(self.mix.trees * 0.6):  # a grass strip along the kerb
                g0, g1 = sorted((side * self.road, side * (self.road + 1.2)))
                self.ground.append(Poly(TERRAIN, grass, _ground(g0, g1, back, end), 1.0))
        self.ground.append(Poly(ROAD, asphalt, _ground(-self.road, self.road, back, end), 1.0))
        if self.crossing is not None:
            c = self.crossing
            self.ground.append(Poly(ROAD, asphalt, _ground(-120, 120, c, c + self.cross_width), 1.0))
            for k in range(int(self.road * 2)):  # zebra stripes before the junction
                x = -self.road + 0.25 + k
                self.ground.append(Poly(ROAD, paint, _ground(x, x + 0.5, c - 4.0, c - 1.0), 1.0))
        self.lane_markings(paint, back, end)

    def lane_markings(self, paint, back, end):
        dash, gap = self.u(2.5, 4.0), self.u(5.0, 9.0)
        for k in range(-self.lanes + 1, self.lanes):
            solid = k == 0 and self.chance(0.4)
            z = back
            while z < end:
                z1 = end if solid else z + dash
                if not self.in_crossing(z, z1, margin=4.0):
                    self.ground.append(Poly(ROAD, paint, _ground(k * LANE - 0.08, k * LANE + 0.08, z, z1), 1.0))
                z = z1 + gap
        if self.parking:
            for side in (-1, 1):
                x = side * self.lanes * LANE
                self.ground.append(Poly(ROAD, paint, _ground(x - 0.07, x + 0.07, back, end), 1.0))

    # -- street-side lots
    def lots(self, side):
        kinds = ("building", "wall", "fence", "park", "gap")
        weights = np.array([0.6, 0.12, 0.12, self.mix.parks, 0.05])
        z = -30.0
        while z < self.length:
            if self.crossing is not None and self.crossing - 4.0 < z < self.crossing + self.cross_width:
                z = self.crossing + self.cross_width + 1.0  # no lots on the cross street, nor slivers just before it
                continue
            size = self.u(10, 32)
            if self.crossing is not None and z < self.crossing < z + size + 1:
                size = self.crossing - 1.0 - z  # stop short of the cross street
            kind = kinds[self.rng.choice(len(kinds), p=weights / weights.sum())]
            getattr(self, f"lot_{kind}")(side, z, z + size)
            z += size + (self.u(1, 5) if self.chance(0.3) else 0.0)

    def lot_building(self, side, z0, z1):
        front = self.outer_x(side) + side * (0.0 if self.chance(0.6) else self.u(0.5, 3.0))
        x0, x1 = sorted((front, front + side * self.u(10, 20)))
        floors, floor_h = int(self.rng.integers(2, 9)), self.u(3.0, 3.6)
        height = floors * floor_h + self.u(0.3, 1.5)
        facade, glass = self.pick("facade"), self.pick("glass")
        spacing, win_w, win_h = self.u(2.4, 3.6), self.u(0.9, 1.5), self.u(1.1, 1.7)
        shops = self.chance(0.5)

        def windows(width):
            decor = [(BUILDING, _scaled(facade, 0.75), _rect(0, height - 0.5, width, height))]  # cornice
            cols = max(1, int(width / spacing))
            pad = (width - cols * spacing) / 2
            for c in range(cols):
                left = pad + c * spacing
                if shops:
                    decor.append((BUILDING, glass, _rect(left + 0.3, 0.5, left + spacing - 0.3, 2.6)))
                for f in range(1 if shops else 0, floors):
                    u, v = left + (spacing - win_w) / 2, f * floor_h + 0.9
                    decor.append((BUILDING, glass, _rect(u, v, u + win_w, v + win_h)))
            return tuple(decor)

        self.add(z0, [Box(BUILDING, facade, (x0, 0.0, z0), (x1, height, z1), windows(x1 - x0), windows(z1 - z0))],
                 layer=1)
        if side == self.sun:  # the building blocks the sun: its shadow falls across the street
            reach = min(height * self.u(0.4, 1.0), 40.0)
            self.shadows.append(_ground(*sorted((front, front - side * reach)), z0, z1))

    def lot_wall(self, side, z0, z1):
        x0, x1 = sorted((self.outer_x(side), self.outer_x(side) + side * 0.3))
        height, colour = self.u(0.8, 2.8), self.pick("concrete")
        coping = ((WALL, _scaled(colour, 1.15), _rect(0, height - 0.15, z1 - z0, height)),)
        parts = self.yard_plants(side, z0, z1, trees=self.chance(0.5))
        parts.append(Box(WALL, colour, (x0, 0.0, z0), (x1, height, z1), front=coping, side=coping))
        self.add(z0, parts, layer=1)

    def lot_fence(self, side, z0, z1):
        x0, x1 = sorted((self.outer_x(side), self.outer_x(side) + side * 0.06))
        height, colour = self.u(1.0, 2.2), self.pick("fence")
        dark = _scaled(colour, 0.6)
        rails = [(FENCE, dark, _rect(0, h - 0.06, z1 - z0, h + 0.06)) for h in (0.3, height - 0.15)]
        posts = [(FENCE, dark, _rect(u, 0, u + 0.12, height)) for u in np.arange(0.0, z1 - z0, 2.5)]
        parts = self.yard_plants(side, z0, z1, trees=self.chance(0.6))
        parts.append(Box(FENCE, colour, (x0, 0.0, z0), (x1, height, z1), side=tuple(rails + posts)))
        self.add(z0, parts, layer=1)

    def lot_park(self, side, z0, z1):
        parts = self.yard_plants(side, z0, z1, trees=True)
        if self.chance(0.5):  # a hedge along the sidewalk
            x0, x1 = sorted((self.outer_x(side), self.outer_x(side) + side * self.u(0.6, 1.2)))
            parts.append(Box(VEGETATION, self.pick("leaves"), (x0, 0.0, z0), (x1, self.u(0.6, 1.4), z1)))
        self.add(z0, parts, layer=1)

    def lot_gap(self, side, z0, z1):
        pass  # open grass

    def yard_plants(self, side, z0, z1, trees):
        """Trees and bushes behind a lot's front line, far to near."""
        plants = [(self.u(z0, z1), self.tree, self.u(2, 12)) for _ in range(int(self.rng.integers(1, 4)) * trees)]
        plants += [(self.u(z0, z1), self.bush, self.u(1, 6)) for _ in range(int(self.rng.integers(0, 3)))]
        plants.sort(key=lambda plant: -plant[0])
        return [part for z, make, inset in plants for part in make(self.outer_x(side) + side * inset, z)]

    def tree(self, x, z):
        scale = self.u(0.8, 1.3)
        trunk_h, r = self.u(1.8, 3.5) * scale, self.u(1.4, 2.8) * scale
        leaves = self.pick("leaves")
        crown = _ellipse(0, trunk_h + r, r, r * 1.1, 16, self.rng.uniform(0.82, 1.12, 16))
        lobe = _ellipse(self.u(-0.6, 0.6) * r, trunk_h + r * 1.3, r * 0.7, r * 0.7, 12, self.rng.uniform(0.85, 1.1, 12))
        self.shadows.append(_ground_ellipse(x - self.sun * r, z, r * 1.2, r * 0.8))
        trunk = _bar((0, 0), (0, trunk_h + r * 0.6), 0.3 * scale)
        return [Poly(VEGETATION, self.pick("bark"), _facing(trunk, x, z)),
                Poly(VEGETATION, leaves, _facing(crown, x, z)),
                Poly(VEGETATION, _scaled(leaves, 1.12), _facing(lobe, x, z))]

    def bush(self, x, z):
        r = self.u(0.5, 1.2)
        dome = tuple((u, max(v, 0.0)) for u, v in _ellipse(0, 0, r * 1.4, r, 10, self.rng.uniform(0.8, 1.15, 10)))
        return [Poly(VEGETATION, self.pick("leaves"), _facing(dome, x, z))]

    # -- sidewalk furniture
    def sidewalk_furniture(self, side):
        kerb = side * self.road
        if self.chance(self.mix.trees):
            z = self.u(0, 8)
            while z < self.length * 0.8:
                if not self.in_crossing(z, z, margin=5):
                    self.add(z, self.tree(kerb + side * 0.7, z))
                z += self.u(7, 13)
        if self.chance(0.7):
            z = self.u(3, 20)
            while z < self.length * 0.8:
                if not self.in_crossing(z, z, margin=2):
                    self.add(z, self.lamp(kerb + side * 0.4, z, side))
                z += self.u(20, 35)

    def lamp(self, x, z, side):
        height, reach, metal = self.u(6, 9), self.u(1.0, 2.2), self.pick("metal")
        head = x - side * reach
        arm_x0, arm_x1 = sorted((x, head))
        return [Box(POLE, metal, (x - 0.09, 0, z - 0.09), (x + 0.09, height, z + 0.09)),
                Box(POLE, metal, (arm_x0, height - 0.12, z - 0.05), (arm_x1, height, z + 0.05)),
                Box(POLE, metal, (head - 0.3, height - 0.25, z - 0.15), (head + 0.3, height - 0.05, z + 0.15))]

    def traffic_lights_and_signs(self):
        if self.crossing is not None or self.chance(0.35):
            z = self.crossing - 1.5 if self.crossing is not None else self.u(15, 45)
            for side in (-1, 1):
                if self.chance(0.85):
                    self.add(z, self.traffic_light(side * (self.road + 0.5), z, side, overhead=self.chance(0.4)))
        for _ in range(int(self.rng.integers(1, 4))):
            side = -1 if self.chance(0.35) else 1
            z = self.u(6, 60)
            if not self.in_crossing(z, z, margin=2):
                self.add(z, self.sign(side * (self.road + self.u(0.3, 0.8)), z))

    def traffic_light(self, x, z, side, overhead):
        metal, housing = self.pick("metal"), self.pick("housing")
        if not overhead:
            height = self.u(2.8, 3.6)
            return [Box(POLE, metal, (x - 0.08, 0, z - 0.08), (x + 0.08, height + 1.0, z + 0.08)),
                    self.light_box(x, height, z, housing)]
        over, arm_y = x - side * self.u(3, self.road), self.u(5.4, 6.2)  # a mast arm over the road
        a0, a1 = sorted((x, over))
        return [Box(POLE, metal, (x - 0.1, 0, z - 0.1), (x + 0.1, arm_y + 0.2, z + 0.1)),
                Box(POLE, metal, (a0, arm_y, z - 0.06), (a1, arm_y + 0.14, z + 0.06)),
                self.light_box(over, arm_y - 1.0, z, housing)]

    def light_box(self, x, y, z, housing):
        lit = int(self.rng.integers(3))
        lamps = tuple((LIGHT, colour if k == lit else _scaled(colour, 0.33),
                       _ellipse(0.17, y + 0.2 + 0.27 * k, 0.1, 0.1, 8))
                      for k, colour in enumerate(((40, 200, 90), (236, 182, 32), (222, 32, 32))))
        return Box(LIGHT, housing, (x - 0.17, y, z - 0.13), (x + 0.17, y + 0.9, z + 0.13), front=lamps)

    def sign(self, x, z):
        height, r = self.u(2.0, 2.6), self.u(0.3, 0.45)
        cv = height + r  # centre of the plate
        red, white, blue, yellow = (self.pick(c) for c in ("sign_red", "sign_white", "sign_blue", "sign_yellow"))
        kind = int(self.rng.integers(5))
        if kind == 0:    # round: prohibition
            plates = [(red, _ellipse(0, cv, r, r, 14)), (white, _ellipse(0, cv, r * 0.72, r * 0.72, 14))]
        elif kind == 1:  # triangle: warning
            tri = ((-r, cv - r * 0.8), (r, cv - r * 0.8), (0, cv + r * 0.9))
            plates = [(red, tri), (white, tuple((u * 0.65, cv + (v - cv) * 0.65 - r * 0.05) for u, v in tri))]
        elif kind == 2:  # blue: mandatory or information
            arrow = _rect(-r * 0.2, cv - r * 0.6, r * 0.2, cv + r * 0.6)
            plates = [(blue, _rect(-r, cv - r, r, cv + r)), (white, arrow)]
        elif kind == 3:  # stop
            plates = [(red, _ellipse(0, cv, r, r, 8)), (white, _rect(-r * 0.6, cv - r * 0.12, r * 0.6, cv + r * 0.12))]
        else:            # priority road
            plates = [(white, _ellipse(0, cv, r * 1.1, r * 1.1, 4)), (yellow, _ellipse(0, cv, r * 0.75, r * 0.75, 4))]
        pole = Box(POLE, self.pick("metal"), (x - 0.05, 0, z - 0.05), (x + 0.05, cv, z + 0.05))
        return [pole] + [Poly(SIGN, colour, _facing(shape, x, z - 0.06)) for colour, shape in plates]

    # -- vehicles
    def lanes_xs(self):
        """(x, away) for every lane: right of the centre line traffic drives away from the camera."""
        return [(side * LANE * (k + 0.5), side > 0) for side in (-1, 1) for k in range(self.lanes)]

    def vehicle_spot(self, length, lo, hi):
        """(lane x, near z, away) for a moving vehicle, or None when the road is too busy."""
        lanes = self.lanes_xs()
        for _ in range(6):
            x, away = lanes[self.rng.integers(len(lanes))]
            start = max(lo, 9.0) if abs(x - self.ego_x) < 0.1 else lo  # keep clear of the camera's bonnet
            z0 = self.free_spot(x, length, start, hi, tries=1)
            if z0 is not None:
                return x, z0, away
        return None

    def traffic(self):
        for kind, chance in (("train", self.mix.train), ("bus", self.mix.bus), ("truck", self.mix.truck)):
            if self.chance(chance):
                getattr(self, kind)()
        for _ in range(self.rng.poisson(self.mix.cars)):
            spot = self.vehicle_spot(4.8, 8.0, 80.0)
            if spot:
                self.car(*spot)
        if self.parking:
            for side in (-1, 1):
                x = side * (self.lanes * LANE + PARKING / 2)
                z = self.u(-2, 6)
                while z < 80:
                    if self.chance(0.7) and not self.in_crossing(z, z + 4.8) and self.reserve(x, z, z + 4.8):
                        self.car(x, z, side > 0)
                    z += self.u(5.2, 7.0)
        for _ in range(self.rng.poisson(self.mix.cyclists)):
            self.cyclist(BICYCLE)
        for _ in range(self.rng.poisson(self.mix.motorcyclists)):
            self.cyclist(MOTORCYCLE)
        for _ in range(self.rng.poisson(self.mix.parked_bikes)):
            self.parked_bike()

    def contact_shadow(self, x0, x1, z0, z1):
        self.shadows.append(_ground(x0 - 0.2, x1 + 0.2, z0 - 0.2, z1 + 0.2))

    def car(self, x, z0, away):
        length, width = self.u(3.9, 4.8), self.u(1.7, 1.9)
        x0, x1, z1 = x - width / 2, x + width / 2, z0 + length
        paint, glass = self.pick("car"), self.pick("glass")
        lamp = TAIL_LAMP if away else HEAD_LAMP
        front = ((CAR, TYRE, _rect(0.12, 0, 0.42, 0.3)), (CAR, TYRE, _rect(width - 0.42, 0, width - 0.12, 0.3)),
                 (CAR, lamp, _rect(0.08, 0.66, 0.4, 0.82)), (CAR, lamp, _rect(width - 0.4, 0.66, width - 0.08, 0.82)),
                 (CAR, PLATE, _rect(width / 2 - 0.26, 0.4, width / 2 + 0.26, 0.52)))
        c0, c1 = (z0 + 1.0, z1 - 1.3) if away else (z0 + 1.3, z1 - 1.0)  # the cabin sits towards the rear
        i = next(self.ids)
        body = Box(CAR, paint, (x0, 0.28, z0), (x1, 0.95, z1), front=front,
                   side=_wheels(CAR, (0.85, length - 0.85), 0.32, 0.32), instance=i)
        cabin = Box(CAR, paint, (x0 + 0.1, 0.95, c0), (x1 - 0.1, 1.48, c1),
                    front=((CAR, glass, _rect(0.12, 1.0, width - 0.32, 1.42)),),
                    side=((CAR, glass, _rect(0.15, 1.0, c1 - c0 - 0.15, 1.42)),), instance=i)
        self.add(z0, [body, cabin])
        self.contact_shadow(x0, x1, z0, z1)

    def truck(self):
        cargo_len, cab_len, width = self.u(5.5, 8.0), 2.2, 2.45
        spot = self.vehicle_spot(cargo_len + cab_len, 10.0, 60.0)
        if spot is None:
            return
        x, z0, away = spot
        x0, x1 = x - width / 2, x + width / 2
        cab_colour, cargo_colour, glass = self.pick("truck"), self.pick("truck"), self.pick("glass")
        lamp = TAIL_LAMP if away else HEAD_LAMP
        lamps = ((TRUCK, lamp, _rect(0.1, 0.75, 0.45, 0.95)),
                 (TRUCK, lamp, _rect(width - 0.45, 0.75, width - 0.1, 0.95)))
        under = ((TRUCK, TYRE, _rect(0.1, 0, 0.6, 0.6)), (TRUCK, TYRE, _rect(width - 0.6, 0, width - 0.1, 0.6)))
        doors = ((TRUCK, _scaled(cargo_colour, 0.7), _rect(width / 2 - 0.03, 0.8, width / 2 + 0.03, 3.7)),)
        cargo_z, cab_z = (z0, z0 + cargo_len) if away else (z0 + cab_len, z0)
        i = next(self.ids)
        cargo = Box(TRUCK, cargo_colour, (x0, 0.6, cargo_z), (x1, 3.8, cargo_z + cargo_len),
                    front=under + lamps + doors, side=_wheels(TRUCK, (0.9, cargo_len - 0.9), 0.5, 0.5), instance=i)
        cab = Box(TRUCK, cab_colour, (x0, 0.6, cab_z), (x1, 3.0, cab_z + cab_len),
                  front=under + lamps + ((TRUCK, glass, _rect(0.15, 1.8, width - 0.15, 2.7)),),
                  side=((TRUCK, glass, _rect(0.2, 1.8, 1.4, 2.6)),) + _wheels(TRUCK, (1.1,), 0.5, 0.5), instance=i)
        self.add(z0, [cab, cargo] if away else [cargo, cab])  # far box first
        self.contact_shadow(x0, x1, z0, z0 + cargo_len + cab_len)

    def bus(self):
        length, width = 12.0, 2.55
        spot = self.vehicle_spot(length, 10.0, 70.0)
        if spot is None:
            return
        x, z0, away = spot
        paint, glass = self.pick("bus"), self.pick("glass")
        lamp = TAIL_LAMP if away else HEAD_LAMP
        front = ((BUS, TYRE, _rect(0.15, 0, 0.65, 0.35)), (BUS, TYRE, _rect(width - 0.65, 0, width - 0.15, 0.35)),
                 (BUS, glass, _rect(0.12, 1.9 if away else 1.1, width - 0.12, 2.9)),
                 (BUS, lamp, _rect(0.12, 0.6, 0.45, 0.8)), (BUS, lamp, _rect(width - 0.45, 0.6, width - 0.12, 0.8)))
        side = tuple((BUS, glass, _rect(u, 1.3, u + 1.6, 2.7)) for u in np.arange(0.4, length - 1.5, 1.9))
        side += _wheels(BUS, (2.5, length - 3.0), 0.5, 0.5)
        self.add(z0, [Box(BUS, paint, (x - width / 2, 0.35, z0), (x + width / 2, 3.2, z0 + length), front=front,
                          side=side, instance=next(self.ids))])
        self.contact_shadow(x - width / 2, x + width / 2, z0, z0 + length)

    def train(self):
        """A tram: long, on the road, windows all along."""
        length, width = self.u(22, 32), 2.6
        spot = self.vehicle_spot(length, 12.0, 55.0)
        if spot is None:
            return
        x, z0, away = spot
        paint, skirt, glass = self.pick("train"), self.pick("train"), self.pick("glass")
        lamp = TAIL_LAMP if away else HEAD_LAMP
        front = ((TRAIN, glass, _rect(0.15, 1.4, width - 0.15, 3.1)), (TRAIN, skirt, _rect(0, 0.1, width, 0.8)),
                 (TRAIN, lamp, _rect(0.2, 0.9, 0.5, 1.1)), (TRAIN, lamp, _rect(width - 0.5, 0.9, width - 0.2, 1.1)))
        side = ((TRAIN, skirt, _rect(0, 0.1, length, 0.8)),)
        side += tuple((TRAIN, glass, _rect(u, 1.4, u + 1.5, 2.8)) for u in np.arange(0.6, length - 1.5, 2.0))
        self.add(z0, [Box(TRAIN, paint, (x - width / 2, 0.1, z0), (x + width / 2, 3.6, z0 + length), front=front,
                          side=side, instance=next(self.ids))])
        self.contact_shadow(x - width / 2, x + width / 2, z0, z0 + length)

    # -- riders and two-wheelers
    def cyclist(self, vehicle):
        """A rider on a bicycle or motorcycle, riding along the road or crossing at the junction."""
        flip = 1 if self.chance(0.5) else -1
        if self.crossing is not None and self.chance(0.3):
            z = self.crossing + self.u(2, self.cross_width - 2)
            self.add(z, self.ride(vehicle, self.u(-self.road, self.road), z, crossing=True, flip=flip))
            return
        length = 1.8 if vehicle == BICYCLE else 2.1
        lanes = self.lanes_xs()
        lane, away = lanes[self.rng.integers(len(lanes))]
        x = lane if vehicle == MOTORCYCLE else np.sign(lane) * (self.lanes * LANE - 0.8)  # bicycles keep to the edge
        z0 = self.free_spot(lane, length, 10.0 if abs(lane - self.ego_x) < 0.1 else 7.0, 60.0, tries=3)
        if z0 is not None:
            self.add(z0, self.ride(vehicle, x, z0 + length / 2, crossing=False, flip=1 if away else -1))

    def ride(self, vehicle, x, z, crossing, flip):
        """Parts of a ridden two-wheeler: side on when crossing, else along the street with the rider's back."""
        (rear, front), frame = self.two_wheeler(vehicle)
        rider = self.rider(vehicle, side_view=crossing)
        i_bike, i_rider = next(self.ids), next(self.ids)
        place = _facing if crossing else _along
        rear, front = (Poly(vehicle, c, place(s, x, z, flip), 0.9, i_bike) for c, s in (rear, front))
        body = [Poly(vehicle, c, place(s, x, z, flip), 0.9, i_bike) for c, s in frame]
        person = [Poly(RIDER, c, _facing(s, x, z, flip if crossing else 1), 0.9, i_rider) for c, s in rider]
        if crossing:
            return [rear, front, *body, *person]
        near, far = (rear, front) if flip > 0 else (front, rear)
        return [far, *body, *person, near]

    def parked_bike(self):
        vehicle = BICYCLE if self.chance(0.55) else MOTORCYCLE
        side = 1 if self.chance(0.6) else -1
        z = self.u(5, 50)
        if self.in_crossing(z, z + 2, margin=1):
            return
        wheels, frame = self.two_wheeler(vehicle)
        x, i = side * (self.road + self.u(0.5, 1.0)), next(self.ids)
        if self.chance(0.5):  # across the footpath, side on
            parts = [Poly(vehicle, c, _facing(s, x + side * 0.8, z, side), 0.9, i) for c, s in (*wheels, *frame)]
        else:
            parts = [Poly(vehicle, c, _along(s, x, z), 0.9, i) for c, s in (*wheels, *frame)]
        self.add(z, parts)

    def two_wheeler(self, vehicle):
        """Side-view shapes, u forward from the centre: ((rear wheel, front wheel), frame parts)."""
        paint = self.pick("bike")
        if vehicle == BICYCLE:
            r, hub = 0.34, 0.52
            wheels = ((TYRE, _ring(-hub, r, r, 0.07)), (TYRE, _ring(hub, r, r, 0.07)))
            bracket, saddle, head = (0.0, 0.3), (-0.15, 0.85), (0.42, 0.85)
            tubes = (((-hub, r), bracket), (bracket, saddle), (saddle, (-hub, r)), (bracket, head), (saddle, head),
                     (head, (hub, r)))
            frame = [(paint, _bar(a, b, 0.06)) for a, b in tubes]
            frame += [(TYRE, _bar(head, (0.36, 1.02), 0.05)), (TYRE, _bar((-0.26, 0.9), (-0.06, 0.9), 0.07))]
            return wheels, frame
        r, hub = 0.31, 0.68
        wheels = ((TYRE, _ellipse(-hub, r, r, r, 12)), (TYRE, _ellipse(hub, r, r, r, 12)))
        body = ((-0.6, 0.55), (-0.1, 0.45), (0.4, 0.45), (0.6, 0.78), (0.25, 0.92), (-0.2, 0.86), (-0.75, 0.82))
        frame = [(paint, body), (TYRE, _bar((-0.55, 0.9), (-0.05, 0.92), 0.1)),
                 (TYRE, _bar((0.5, 0.8), (0.55, 1.05), 0.05)),
                 (HUB, _ellipse(-hub, r, 0.12, 0.12, 8)), (HUB, _ellipse(hub, r, 0.12, 0.12, 8))]
        return wheels, frame

    def rider(self, vehicle, side_view):
        skin, top, legs = self.pick("skin"), self.pick("clothes"), self.pick("clothes")
        head_colour = self.pick("clothes") if vehicle == MOTORCYCLE else skin  # a helmet
        head_r = 0.14 if vehicle == MOTORCYCLE else 0.11
        if not side_view:  # from behind: a short-legged person above the saddle
            hip = 0.95 if vehicle == BICYCLE else 0.85
            torso = ((-0.17, hip - 0.05), (0.17, hip - 0.05), (0.21, hip + 0.52), (-0.21, hip + 0.52))
            return [(legs, _bar((-0.1, hip), (-0.16, 0.35), 0.13)), (legs, _bar((0.1, hip), (0.16, 0.35), 0.13)),
                    (top, torso), (top, _bar((-0.2, hip + 0.5), (-0.3, 1.0), 0.08)),
                    (top, _bar((0.2, hip + 0.5), (0.3, 1.0), 0.08)),
                    (head_colour, _ellipse(0, hip + 0.66, head_r, head_r * 1.1, 10))]
        if vehicle == BICYCLE:
            hip, knee, foot, shoulder, hand, head = (-0.15, 0.95), (0.12, 0.68), (0.02, 0.32), (0.1, 1.45), \
                (0.38, 1.0), (0.18, 1.6)
        else:
            hip, knee, foot, shoulder, hand, head = (-0.2, 0.85), (0.2, 0.72), (0.12, 0.38), (-0.02, 1.4), \
                (0.48, 1.0), (0.02, 1.56)
        return [(legs, _bar(hip, knee, 0.16)), (legs, _bar(knee, foot, 0.12)), (top, _bar(hip, shoulder, 0.32)),
                (top, _bar(shoulder, hand, 0.09)), (head_colour, _ellipse(*head, head_r, head_r * 1.1, 10))]

    # -- people
    def pedestrians(self):
        for _ in range(self.rng.poisson(self.mix.persons)):
            side = 1 if self.chance(0.55) else -1
            self.person(side * (self.road + self.u(0.4, self.sidewalk[side] - 0.4)), self.u(3, 70))
        if self.crossing is not None:
            for _ in range(self.rng.poisson(1.2)):
                self.person(self.u(-self.road, self.road), self.crossing - self.u(1.2, 3.8))

    def person(self, x, z):
        height = self.u(1.55, 1.95)
        s, hip, shoulder = height / 1.75, 0.47 * height, 0.81 * height
        skin, top, legs = self.pick("skin"), self.pick("clothes"), self.pick("clothes")
        stride, swing = self.u(-0.12, 0.12) * s, self.u(-0.08, 0.08) * s
        torso = ((-0.17 * s, hip - 0.03), (0.17 * s, hip - 0.03), (0.21 * s, shoulder), (-0.21 * s, shoulder))
        shapes = [(legs, _bar((-0.08 * s, hip), (-0.08 * s - stride, 0), 0.14 * s)),
                  (legs, _bar((0.08 * s, hip), (0.08 * s + stride, 0), 0.14 * s)),
                  (top, torso),
                  (top, _bar((-0.22 * s, shoulder - 0.02), (-0.26 * s - swing, hip), 0.08 * s)),
                  (top, _bar((0.22 * s, shoulder - 0.02), (0.26 * s + swing, hip), 0.08 * s)),
                  (skin, _ellipse(0, 0.9 * height, 0.11 * s, 0.13 * s, 10))]
        i = next(self.ids)
        self.add(z, [Poly(PERSON, c, _facing(shape, x, z), 0.9, i) for c, shape in shapes])
        self.shadows.append(_ground_ellipse(x - self.sun * 0.3, z, 0.45, 0.3))

    # -- the far end of the street
    def backdrop(self):
        z, x, parts = self.length + 5, -160.0, []
        while x < 160:
            width = self.u(8, 30)
            if self.chance(0.7):
                skyline = _rect(x, 0, x + width, self.u(8, 40))
                parts.append(Poly(BUILDING, self.pick("facade"), _facing(skyline, 0, z)))
            else:
                top, n = self.u(6, 14), max(4, int(width / 2))
                crowns = ((x + width * k / (n - 1), top * self.u(0.8, 1.1)) for k in range(n))
                treeline = ((x, 0), *crowns, (x + width, 0))
                parts.append(Poly(VEGETATION, self.pick("leaves"), _facing(treeline, 0, z)))
            x += width
        self.add(z, parts, layer=0)
