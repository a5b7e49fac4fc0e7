"""Where frames come from: cirn.common.sources, shared with training (a video target is decoded by the same code)."""
from cirn.common.sources import (BAD_FRAME_POLICIES, MAX_BAD_IN_A_ROW, SEQUENCE, BadFrame, FrameSource, ImageSource,
                                 SourceFrame, VideoSource, list_images, open_source)

__all__ = ["BAD_FRAME_POLICIES", "MAX_BAD_IN_A_ROW", "SEQUENCE", "BadFrame", "FrameSource", "ImageSource",
           "SourceFrame", "VideoSource", "list_images", "open_source"]
