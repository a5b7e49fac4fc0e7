"""Class names, id maps, colour palette and evaluation protocols: the one place that holds them.

All numbers come from ../shared/REFERENCE.md (Cityscapes trainIds, GTA5 and SYNTHIA id maps).
"""
import numpy as np

IGNORE_INDEX = 255

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
NUM_CLASSES = len(CLASS_NAMES)

PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)  # (19, 3) RGB, indexed by trainId

# Cityscapes labelIds of the 19 evaluated classes, in trainId order. GTA5 labels use the same ids.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

# SYNTHIA-RAND-CITYSCAPES class id -> trainId (19-class numbering).
SYNTHIA_ID_TO_TRAINID = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
    8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}

# Evaluation protocols: which trainIds are averaged into the mIoU.
PROTOCOLS = {
    19: tuple(range(19)),
    16: tuple(c for c in range(19) if c not in (9, 14, 16)),          # no terrain, truck, train
    13: tuple(c for c in range(19) if c not in (3, 4, 5, 9, 14, 16)),  # also no wall, fence, pole
}


def _lut(mapping, size):
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


# Lookup tables: labelId -> trainId for 8-bit Cityscapes/GTA5 labels, SYNTHIA id -> trainId for 16-bit ones.
LABELID_TO_TRAINID = _lut({lid: t for t, lid in enumerate(CITYSCAPES_LABEL_IDS)}, 256)
SYNTHIA_TO_TRAINID = _lut(SYNTHIA_ID_TO_TRAINID, 65536)
TRAINID_TO_LABELID = _lut({t: lid for t, lid in enumerate(CITYSCAPES_LABEL_IDS)}, 256)
TRAINID_TO_LABELID[IGNORE_INDEX] = 0  # Cityscapes "unlabeled"
# trainId -> SYNTHIA class id (the toy generator writes SYNTHIA-format labels with it); 0 = void.
TRAINID_TO_SYNTHIA = np.zeros(256, dtype=np.uint16)
for _sid, _t in SYNTHIA_ID_TO_TRAINID.items():
    TRAINID_TO_SYNTHIA[_t] = _sid


def protocol_classes(protocol):
    """trainIds averaged by a 19-, 16- or 13-class protocol."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def colorize(labels):
    """(H, W) trainIds -> (H, W, 3) uint8 RGB; ignored pixels are black."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:NUM_CLASSES] = PALETTE
    return palette[labels]
