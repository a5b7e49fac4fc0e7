"""cirn.common: the few definitions training, export and the runtime all use; numpy, Pillow and the standard library
only (no torch), so that a deploy-only install can import it.

    errors         CirnError, the one exception type for user mistakes
    files          atomic writes, JSON-safe values, image reading, image-file suffixes
    normalization  the input normalisations of the backbones' weights (constants and the one affine map)
    metadata       the schema of an exported model's metadata (what export writes, what the runtime reads back)
"""
