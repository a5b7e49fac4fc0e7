"""The built-in procedural toy domain pair: a game-like labelled source and a camera-like target.

It mimics GTA5 -> Cityscapes at toy scale, so every stage runs end to end on a laptop and the tests have data.
Both domains come from one scene grammar, so the gap is mostly appearance. Measured with a small FCN (128x64,
300 images each): trained on the source it scores 13 mIoU on target val, 22 after per-image colour-statistics
matching, 38 trained on the target itself. The look is frozen: bump dataset.GENERATOR_VERSION whenever an output
byte changes.

The target has a second look, 'dusk' (generate(look='dusk'), `cirn-data toy --look dusk`, data.toy_look=dusk): the
same scenes and labels painted by a camera at dusk, in its own folder ($CIRN_DATA/toy-dusk), to check that a recipe
tuned on the toy pair is not tuned to one pair. No mIoU has been measured on it yet.

    scene    the grammar: sample_scene(rng, mix) draws a Scene of boxes and polygons in world metres
    render   render_frame(scene, size_wh, style, ...) paints it as the source ('source'), the target ('target') or
             the target at dusk ('dusk')
    dataset  generate() and ensure_toy() write the GTA5, SYNTHIA and Cityscapes layouts, the target in either look
    video    render_video() drives a camera down one target street: a dashcam clip with its ground truth
"""
from .dataset import GENERATOR_VERSION, MANIFEST, ToyPaths, default_root, ensure_toy, generate, read_manifest
from .render import STYLES, Frame, render_frame
from .scene import MIXES, Scene, sample_scene
from .video import render_video

__all__ = ["GENERATOR_VERSION", "MANIFEST", "MIXES", "STYLES", "Frame", "Scene", "ToyPaths", "default_root",
           "ensure_toy", "generate", "read_manifest", "render_frame", "render_video", "sample_scene"]
