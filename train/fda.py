"""FDA (Yang & Soatto, CVPR 2020): a training-free intermediate domain. Each source image takes the low-frequency
amplitude spectrum of a target image (its "style") and keeps its own phase (its content).

The swapped band is the frequencies with |k_y| < b and |k_x| < b (signed FFT indices), b = floor(min(h, w) * beta):
b = 0 changes nothing, b = 1 swaps only the mean colour. FDA's PyTorch code swaps [-b, b-1] on each axis, a band
that is not conjugate-symmetric (it drops the imaginary part that results); the symmetric band keeps the inverse FFT
real. The result is clipped to [0, 255], as the images are 8-bit PNGs.

space 'log' swaps the spectra of log(1 + pixel) instead of the pixels (homomorphic filtering): light and exposure
multiply a scene's colours, so there the swap scales each channel (b = 1: its geometric mean) and keeps dark
detail, where the pixels' additive swap shifts them, clipping to black what lies below the shift.
"""
import math
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets import build_source_dataset, build_target_dataset, denormalize
from cirn.common.errors import CirnError
from .io import read_image


def band_half_width(height, width, beta):
    """b = floor(min(h, w) * beta): frequencies with |k| < b on both axes are swapped."""
    return math.floor(min(height, width) * beta)


def swap_low_amplitude(src, trg, b):
    """(H, W, C) float source and target -> (H, W, C) float: target amplitude on |k_y|, |k_x| < b, source phase."""
    assert src.shape == trg.shape and src.ndim == 3, f"source {src.shape} vs target {trg.shape}"
    if b <= 0:
        return src.astype(np.float64)
    fft_src = np.fft.fft2(src, axes=(0, 1))
    fft_trg = np.fft.fft2(trg, axes=(0, 1))
    amp_src, pha_src = np.abs(fft_src), np.angle(fft_src)
    amp_trg = np.abs(fft_trg)
    h, w = src.shape[:2]
    # Signed frequency k of each FFT index is index for index <= n/2, else index - n.
    rows = np.abs(np.fft.fftfreq(h) * h) < b  # (H,)
    cols = np.abs(np.fft.fftfreq(w) * w) < b  # (W,)
    band = rows[:, None] & cols[None, :]      # (H, W)
    amp_src[band] = amp_trg[band]
    return np.fft.ifft2(amp_src * np.exp(1j * pha_src), axes=(0, 1)).real


def fda_transfer(src, trg, beta, space="linear"):
    """(H, W, 3) uint8 source and target (same size) -> (H, W, 3) uint8 source with the target's low frequencies,
    swapped in the pixels' space ('linear') or in log(1 + pixel) ('log')."""
    if src.shape != trg.shape or src.dtype != np.uint8 or trg.dtype != np.uint8:
        raise CirnError(f"fda_transfer needs two uint8 images of one size, got {src.dtype} {src.shape} and "
                        f"{trg.dtype} {trg.shape}")
    b = band_half_width(src.shape[0], src.shape[1], beta)
    if b == 0:
        return src.copy()
    if space == "log":
        out = np.expm1(swap_low_amplitude(np.log1p(src.astype(np.float64)), np.log1p(trg.astype(np.float64)), b))
    else:
        out = swap_low_amplitude(src.astype(np.float64), trg.astype(np.float64), b)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class FDATranslator:
    """translate(image, index) for the intermediate-domain writer: each source image gets one target image, drawn
    from (seed, source name) so a resumed or re-ordered run pairs them the same way; the target is resized
    (bicubic) to the source image's size."""

    def __init__(self, target_paths, beta, seed=0, space="linear"):
        if not target_paths:
            raise CirnError("FDA needs at least one target image")
        self.target_paths, self.beta, self.seed, self.space = list(target_paths), beta, seed, space

    def target_index(self, name):
        rng = np.random.default_rng((self.seed, zlib.crc32(name.encode())))
        return int(rng.integers(len(self.target_paths)))

    def target_for(self, name, width, height):
        """(height, width, 3) uint8 target image paired with source image `name`."""
        image = read_image(self.target_paths[self.target_index(name)])
        if image.shape[:2] != (height, width):
            image = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
        return image

    def __call__(self, image, name):
        """(1, 3, H, W) tanh-normalised source image, its name -> (H, W, 3) uint8 translated image."""
        src = denormalize(image[0], "tanh")  # (H, W, 3) uint8, the resized source pixels
        trg = self.target_for(name, src.shape[1], src.shape[0])
        return fda_transfer(src, trg, self.beta, self.space)


def open_fda(cfg):
    """(source set, translator, identity) of cfg's FDA intermediate domain: both datasets opened, nothing written."""
    beta = cfg.stage1.beta
    source_set = build_source_dataset(cfg.data, "tanh", intermediate=False, flip=False)
    target_set = build_target_dataset(cfg.data, "tanh", with_labels=False, flip=False)
    space = cfg.stage1.fda_space
    translator = FDATranslator([path for _, path, _ in target_set.samples], beta, seed=cfg.run.seed, space=space)
    identity = {"method": "fda", "beta": beta, "space": space, "seed": cfg.run.seed,
                "target_root": str(Path(cfg.data.target_root).resolve()) if cfg.data.target_root else "toy",
                "target_list": cfg.data.target_list}
    return source_set, translator, identity


def translate_fda(cfg, out_dir, quiet=False, opened=None):
    """Write the FDA intermediate domain of cfg.data's source to `out_dir` (source layout); returns its manifest.
    opened: open_fda(cfg) when the caller has it already."""
    from .stage1 import write_intermediate  # stage1 imports this module: import here, at call time
    source_set, translator, identity = opened or open_fda(cfg)
    return write_intermediate(out_dir, cfg.data, source_set, translator, identity, quiet=quiet)
