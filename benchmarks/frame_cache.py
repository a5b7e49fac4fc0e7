"""A video target's frames: decoded once into a PNG cache, or sought and decoded on the fly? Both measured in one run.

    python benchmarks/frame_cache.py drive.mp4 --stride 2 [--draws 100]

Training draws target frames in random order. With the cache (what `--target video` does) a draw reads one PNG;
on the fly it would seek the video to the frame and decode it, and a seek in an MPEG-4 stream decodes from the last
key frame before it. This prints the one-off cost of decoding every stride-th frame into a cache, then the mean
time of one random draw each way, over the same random frames (interleaved, so the machine's noise hits both).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--draws", type=int, default=100)
    args = parser.parse_args(argv)
    import cv2

    from cirn.train.datasets import decode_video_frames
    from cirn.train.io import read_image

    video = Path(args.video)
    if not video.is_file():
        sys.exit(f"error: {video} does not exist: give a video file (cirn-data toy-video --out drive.mp4)")
    # decode_video_frames caches under $CIRN_DATA: a throwaway one here, not the user's
    with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ, {"CIRN_DATA": cache}):
        start = time.perf_counter()
        folder = decode_video_frames(video, args.stride, "skip", quiet=True)[0]
        decode_s = time.perf_counter() - start
        frames = sorted(folder.rglob("*.png"))
        rng = np.random.default_rng(0)
        picks = rng.integers(len(frames), size=args.draws)
        capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
        png_s = seek_s = 0.0
        for k in picks:
            start = time.perf_counter()
            read_image(frames[k])
            png_s += time.perf_counter() - start
            start = time.perf_counter()
            capture.set(cv2.CAP_PROP_POS_FRAMES, int(k) * args.stride)
            ok, image = capture.read()
            if not ok:
                sys.exit(f"error: {video}: frame {int(k) * args.stride} could not be sought and decoded")
            cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            seek_s += time.perf_counter() - start
        capture.release()
    figures = {"frames": len(frames), "decode_ms_per_frame": 1000 * decode_s / len(frames),
               "png_ms": 1000 * png_s / args.draws, "seek_ms": 1000 * seek_s / args.draws}
    print(f"{video}: {len(frames)} frames (one in {args.stride}) decoded once into PNGs in {decode_s:.1f} s "
          f"({1000 * decode_s / len(frames):.1f} ms a frame)")
    print(f"one random draw over {args.draws}: PNG from the cache {1000 * png_s / args.draws:.2f} ms, seek + decode "
          f"on the fly {1000 * seek_s / args.draws:.2f} ms (x{seek_s / png_s:.1f})")
    return figures


if __name__ == "__main__":
    main()
