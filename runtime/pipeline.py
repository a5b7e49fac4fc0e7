"""The video pipeline: decoding, inference and post-processing overlapped in three threads with bounded queues.

    decode thread           main thread                     post thread
    read + resize   ->Q1->  batch of B frames, backend  ->Q2->  labels back to frame size, PNG / NPZ,
    (every Nth frame)       (one call per batch)             overlay + legend, MP4 encode, progress

Q1 holds 2 batches of frames and Q2 2 batches of results, so memory stays bounded whatever the video's length and a
slow stage holds the others back instead of piling frames up. OpenCV, ONNX Runtime and PyTorch release the GIL in
their heavy calls, so the three stages really run at the same time; the inference stage runs on the main thread
because that is where Ctrl-C arrives and where CUDA contexts are simplest.

Stopping:
- End of the source: the decoder sends an end marker through Q1, the main thread runs the last (short) batch and
  forwards the marker through Q2; the post thread finishes and the outputs are renamed into place.
- A decode failure mid-stream is an end like any other, with the reason kept: everything decoded before it is
  processed and written, and the summary says where decoding stopped (`complete: false`, `decode_error`).
- Ctrl-C (KeyboardInterrupt in the main thread): the decoder is told to stop, the batches already inferred are
  post-processed, the video is closed (a playable MP4 of the frames done) and renamed to its final name, and
  `Interrupted` (a KeyboardInterrupt carrying the summary) is raised.
- Any other error (a backend failure, a full disk): the threads stop, unfinished files are deleted, the error is
  raised.

Timing: each stage adds up the seconds it is busy; end-to-end FPS is frames over the wall time from the first
read to the last write. With `benchmark`, the backend first runs alone over the same frames, decoded into memory
beforehand: `benchmark.ratio` = end-to-end FPS / pure-inference FPS says how much of the backend's speed the whole
pipeline keeps.
"""
import json
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np

from cirn.common.errors import CirnError
from cirn.common.files import json_ready
from cirn.common.sizes import parse_size_wh

from .backends import available_cores, to_labels
from .latency import measure_latency, percentiles
from .outputs import Outputs, resize_frame, write_atomically
from .sources import BadFrame, open_source

QUEUE_BATCHES = 2        # batches each queue holds
BENCHMARK_MEMORY = 2 << 30  # bytes of decoded frames the pure-inference benchmark may hold
IMAGE_FPS = 10.0         # frame rate of a video made from images
POLL_S = 0.1             # how often a blocked thread looks at the stop flags


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during `run`: the partial outputs are finalised; `summary` describes them."""

    def __init__(self, summary):
        super().__init__("interrupted")
        self.summary = summary


class _End:
    """The end of the frames, with the reason when decoding failed; `fatal`: a BadFrame that fails the run."""

    def __init__(self, error=None):
        self.error, self.fatal = error, None


def _put(q, item, stop):
    """q.put that gives up (returns False) once `stop` is set, so no thread blocks forever on a full queue."""
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(q, failed):
    """q.get that raises the post thread's error when that thread has died."""
    while True:
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            if failed:
                raise failed[0] from None


def inference_size_hw(metadata, imgsz=None):
    """(H, W) the frames are resized to: the model's own size, or `imgsz` ('WIDTHxHEIGHT') for a dynamic model."""
    if imgsz is None:
        return tuple(metadata.input_size_hw)
    width, height = parse_size_wh(imgsz)
    if not metadata.dynamic and (height, width) != tuple(metadata.input_size_hw):
        model_height, model_width = metadata.input_size_hw
        raise CirnError(f"--imgsz {width}x{height}: the model is a static export that takes "
                        f"{model_width}x{model_height} frames only; drop --imgsz, or re-export with --dynamic")
    return height, width


def _rate(frames, seconds):
    return frames / seconds if seconds > 0 else None


# ---------------------------------------------------------------- the stages
class _Decoder(threading.Thread):
    """Reads the source and resizes each frame to the model's size; ends with an _End through the queue."""

    def __init__(self, source, size_hw, out_q, stop):
        super().__init__(name="cirn-decode", daemon=True)
        self.source, self.size_hw, self.out_q, self.stop = source, size_hw, out_q, stop
        self.busy_s, self.cpu_s, self.frames = 0.0, 0.0, 0

    def run(self):
        end = _End()
        cpu_start = time.thread_time()
        try:
            frames = iter(self.source)
            while not self.stop.is_set():
                start = time.perf_counter()
                frame = next(frames, None)
                if frame is None:
                    break
                model_input = resize_frame(frame.image, self.size_hw)
                self.busy_s += time.perf_counter() - start
                self.frames += 1
                if not _put(self.out_q, (frame, model_input), self.stop):
                    break
        except BadFrame as err:  # --bad-frames fail: the run fails
            end.fatal = err
        except Exception as err:  # any failure of the decoder ends the stream; what came before is kept
            end.error = f"decoding failed after {self.frames} frames: {type(err).__name__}: {err}"
        if end.error is None:
            end.error = self.source.decode_error
        self.cpu_s = time.thread_time() - cpu_start
        _put(self.out_q, end, self.stop)


class _PostProcessor(threading.Thread):
    """Writes every result in order through Outputs; records its first error in `failed` and stops."""

    def __init__(self, in_q, outputs, progress, stop):
        super().__init__(name="cirn-post", daemon=True)
        self.in_q, self.outputs, self.progress, self.stop = in_q, outputs, progress, stop
        self.busy_s, self.cpu_s, self.failed = 0.0, 0.0, []

    def run(self):
        while not self.stop.is_set():
            try:
                item = self.in_q.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if isinstance(item, _End):
                return
            frames, labels = item
            try:
                for frame, frame_labels in zip(frames, labels, strict=True):
                    start, cpu_start = time.perf_counter(), time.thread_time()
                    self.outputs.add(frame, frame_labels)
                    self.busy_s += time.perf_counter() - start
                    self.cpu_s += time.thread_time() - cpu_start
                    self.progress.update(1)
            except OSError as err:
                where = f" ({err.filename})" if err.filename else ""
                self.failed.append(CirnError(f"cannot write the outputs: {err.strerror or err}{where}"))
            except BaseException as err:  # handed to the main thread, which raises it
                self.failed.append(err)
            if self.failed:
                self.stop.set()  # the main thread's puts give up instead of blocking on a queue no one reads
                return


# ---------------------------------------------------------------- the pipeline
def _progress(total, quiet):
    from tqdm import tqdm
    return tqdm(total=total, unit="frame", desc="cirn-run", file=sys.stderr, disable=quiet, dynamic_ncols=True,
                smoothing=0.1, mininterval=0.5)


def benchmark_inference(backend, source, size_hw, stride=1, batch=1, max_bytes=BENCHMARK_MEMORY, files=None):
    """The backend alone on the frames of `source` (decoded and resized into memory first, as much as max_bytes
    holds): {'frames', 'seconds', 'fps', 'latency_ms'} of one pass in batches of `batch`."""
    src = open_source(source, stride, "skip", files)
    try:
        if src.kind == "camera":
            raise CirnError("--benchmark needs a file source: a camera cannot be replayed")
        limit = max(batch, max_bytes // (size_hw[0] * size_hw[1] * 3))
        frames = []
        for frame in src:
            frames.append(resize_frame(frame.image, size_hw))
            if len(frames) >= limit:
                break
    finally:
        src.close()
    frames = np.stack(frames)  # (N, H, W, 3)
    batches = [frames[i:i + batch] for i in range(0, len(frames), batch)]  # views, not copies
    pending = iter(batches)
    timing = measure_latency(lambda: to_labels(backend(next(pending))), iterations=len(batches))  # each batch once
    return {"frames": len(frames), "seconds": timing["seconds"], "fps": _rate(len(frames), timing["seconds"]),
            "latency_ms": timing["latency_ms"]}


def run(source, backend, out=None, labels_dir=None, npz=None, summary=None, batch=1, stride=1, imgsz=None,
        alpha=0.5, side_by_side=False, benchmark=False, quiet=False, log=None, bad_frames="stop", files=None):
    """Segment every `stride`-th frame of `source` with `backend`; returns the summary dict (also written to
    `summary` as JSON when given).

    source: a video file, an image, a folder of images, or a camera index (int). out: overlay MP4 (None: none).
    labels_dir: per-frame trainId PNGs named like the frames (Cityscapes names for videos). npz: the label maps in
    one .npz. batch: frames per backend call. imgsz: 'WIDTHxHEIGHT' for a dynamic model (default: the model's size).
    alpha: overlay opacity. side_by_side: the input left of the overlay. benchmark: time the backend alone on the
    same frames first (summary['benchmark']). quiet: no progress bar. log: a callable for warnings (default:
    stderr). bad_frames: stop | skip | fail on an undecodable frame (sources.py). files: only these images of a
    folder source (a shard).
    Raises Interrupted (a KeyboardInterrupt) on Ctrl-C after finalising the partial outputs.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if batch < 1:
        raise CirnError(f"--batch must be at least 1, got {batch}")
    size_hw = inference_size_hw(backend.metadata, imgsz)
    backend.check_size(size_hw)
    for path in (out, npz, summary):
        if path is not None and isinstance(source, (str, Path)) and Path(path).resolve() == Path(source).resolve():
            raise CirnError(f"an output ({path}) would overwrite the source")
    if not 0.0 <= alpha <= 1.0:
        raise CirnError(f"--alpha must be between 0 and 1, got {alpha}")
    src = open_source(source, stride, bad_frames, files)  # a missing file, not a video, no frames: before any output
    try:
        warmup_s = backend.warmup(size_hw, batch)
        bench = benchmark_inference(backend, source, size_hw, stride, batch, files=files) if benchmark else None
        fps_in = src.fps if src.kind in ("video", "camera") and src.fps else IMAGE_FPS
        outputs = Outputs(backend.metadata, video=out, fps=fps_in / stride, labels_dir=labels_dir, npz=npz,
                          alpha=alpha, side_by_side=side_by_side, bin_frames=max(1, round(fps_in)))
        result = _run_threads(src, backend, outputs, size_hw, batch, quiet)
    finally:
        src.close()

    stopped = result["stopped"]
    info = _summary(source, src, backend, size_hw, batch, stride, result, bench, warmup_s)
    if summary:
        write_atomically(summary, (json.dumps(json_ready(info), indent=2) + "\n").encode())
        info["summary"] = str(summary)
    if stopped == "interrupted":
        raise Interrupted(info)
    if result["decode_error"]:
        log(f"warning: {result['decode_error']}; kept the {result['frames']} frames processed before it")
    if src.skipped:
        log(f"warning: skipped {len(src.skipped)} undecodable frames (--bad-frames skip): "
            f"{', '.join(src.skipped[:5])}{' ...' if len(src.skipped) > 5 else ''}")
    return info


def _run_threads(src, backend, outputs, size_hw, batch, quiet):
    """The three stages over `src`; returns the counts and timings. Finalises or discards the outputs."""
    stop_decode, stop_post = threading.Event(), threading.Event()
    frames_q = queue.Queue(maxsize=QUEUE_BATCHES * batch)
    results_q = queue.Queue(maxsize=QUEUE_BATCHES)
    progress = _progress(src.count, quiet)
    decoder = _Decoder(src, size_hw, frames_q, stop_decode)
    post = _PostProcessor(results_q, outputs, progress, stop_post)
    latencies, infer_s, wait_s, frames_done, end, stopped = [], 0.0, 0.0, 0, None, None
    start, cpu_start = time.perf_counter(), time.process_time()
    decoder.start()
    post.start()
    try:
        while end is None:
            items = []
            t0 = time.perf_counter()
            while len(items) < batch:
                item = _get(frames_q, post.failed)
                if isinstance(item, _End):
                    end = item
                    break
                items.append(item)
            wait_s += time.perf_counter() - t0
            if end is not None and end.fatal is not None:
                raise end.fatal
            if not items:
                break
            t0 = time.perf_counter()
            labels = to_labels(backend(np.stack([model_input for _, model_input in items])))
            elapsed = time.perf_counter() - t0
            infer_s += elapsed
            latencies.append((elapsed * 1000.0, len(items)))
            frames_done += len(items)
            if not _put(results_q, ([frame for frame, _ in items], labels), stop_post):
                raise post.failed[0]
        _put(results_q, _End(), stop_post)
        post.join()
        if post.failed:
            raise post.failed[0]
    except KeyboardInterrupt:
        stopped = "interrupted"
        stop_decode.set()
        _put(results_q, _End(), stop_post)  # the post thread finishes the batches already inferred, then ends
        post.join()
    except BaseException:
        stop_decode.set()
        stop_post.set()
        post.join(timeout=10)
        decoder.join(timeout=10)
        progress.close()
        outputs.discard()
        raise
    finally:
        stop_decode.set()
        decoder.join(timeout=10)
    progress.close()
    if post.failed:
        outputs.discard()
        raise post.failed[0]
    files = outputs.finish()
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    decode_error = end.error if end is not None else None
    return {"frames": outputs.frames, "inferred": frames_done, "decoded": decoder.frames, "wall_s": wall_s,
            "decode_s": decoder.busy_s, "infer_s": infer_s, "infer_wait_s": wait_s, "post_s": post.busy_s,
            "cpu_s": cpu_s, "decode_cpu_s": decoder.cpu_s, "post_cpu_s": post.cpu_s,
            "latencies_ms": latencies, "files": files, "shares": outputs.shares(),
            "stopped": stopped or ("decode error" if decode_error else None), "decode_error": decode_error}


def _summary(source, src, backend, size_hw, batch, stride, result, bench, warmup_s):
    """The JSON-ready summary of a run."""
    frames = result["frames"]
    end_to_end = _rate(frames, result["wall_s"])
    inference = _rate(result["inferred"], result["infer_s"])
    per_batch = [ms for ms, _ in result["latencies_ms"]]
    per_frame = [ms / n for ms, n in result["latencies_ms"]]
    info = {
        "source": str(source), "source_kind": src.kind, "source_fps": src.fps,
        "frame_size_hw": [src.size_wh[1], src.size_wh[0]] if src.size_wh else None,
        "model": backend.path, "checkpoint": backend.metadata.raw.get("source_checkpoint"),
        "backend": backend.name, "device": backend.device,
        "backend_detail": backend.describe(), "input_size_hw": list(size_hw), "batch": batch, "stride": stride,
        "frames": {"processed": frames, "decoded": result["decoded"], "expected": src.count,
                   "skipped": len(src.skipped), "skipped_names": src.skipped},
        "complete": result["stopped"] is None,
        "stopped": result["stopped"], "decode_error": result["decode_error"],
        "note": ("interrupted (Ctrl-C): the outputs hold the frames processed before it" if result["stopped"] ==
                 "interrupted" else result["decode_error"]),
        "outputs": result["files"],
        "timing": {
            "wall_s": result["wall_s"], "warmup_s": warmup_s,
            "busy_s": {"decode": result["decode_s"], "inference": result["infer_s"], "post": result["post_s"]},
            "inference_waited_for_frames_s": result["infer_wait_s"],
            # CPU seconds (all threads of the process; decode and post threads alone). Wall-clock busy times include
            # time a thread waited for a core: on a loaded CPU these say what each stage really costs.
            "cpu_s": {"process": result["cpu_s"], "decode": result["decode_cpu_s"], "post": result["post_cpu_s"],
                      "inference_and_rest": result["cpu_s"] - result["decode_cpu_s"] - result["post_cpu_s"]},
            "fps": {"end_to_end": end_to_end, "decode": _rate(result["decoded"], result["decode_s"]),
                    "inference": inference, "post": _rate(frames, result["post_s"])},
            "end_to_end_over_inference": end_to_end / inference if end_to_end and inference else None,
        },
        "latency_ms": {"inference_batch": percentiles(per_batch),
                       "inference_per_frame": percentiles(per_frame)},
        "class_shares": result["shares"],
        "host": {"cpu_cores": available_cores()},
    }
    if bench is not None:
        info["benchmark"] = {"pure_inference_fps": bench["fps"], "pure_inference_frames": bench["frames"],
                             "pure_inference_latency_ms": bench["latency_ms"], "end_to_end_fps": end_to_end,
                             "ratio": end_to_end / bench["fps"] if end_to_end and bench["fps"] else None}
    return info



def format_summary(info):
    """A few lines for the terminal: frames, FPS per stage and end to end, latency, the benchmark ratio."""
    t, lat = info["timing"], info["latency_ms"]["inference_batch"]

    def fps(value):
        return "n/a" if value is None else f"{value:.1f}"
    lines = [f"{info['frames']['processed']} frames ({info['source_kind']} {info['source']}) with "
             f"{info['backend_detail']}, input {info['input_size_hw'][1]}x{info['input_size_hw'][0]}, batch "
             f"{info['batch']}, stride {info['stride']}",
             f"FPS end to end {fps(t['fps']['end_to_end'])} | decode {fps(t['fps']['decode'])} | inference "
             f"{fps(t['fps']['inference'])} | post {fps(t['fps']['post'])}"]
    if lat:
        lines.append(f"inference latency per batch: p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms, "
                     f"p99 {lat['p99']:.2f} ms")
    bench = info.get("benchmark")
    if bench and bench["ratio"] is not None:
        lines.append(f"benchmark: end to end {bench['end_to_end_fps']:.1f} FPS vs pure inference "
                     f"{bench['pure_inference_fps']:.1f} FPS on the same frames: {100 * bench['ratio']:.1f} %")
    for key in ("video", "npz", "labels_dir"):
        if info["outputs"].get(key):
            lines.append(f"{key.replace('_', ' ')}: {info['outputs'][key]}")
    if info.get("summary"):
        lines.append(f"summary: {info['summary']}")
    return "\n".join(lines)
