"""Parity of an exported model with PyTorch on real target images: logits, labels, mIoU and speed.

The reference is the same DeployModel in PyTorch FP32 (SegNet.fused, upsampled, argmax): what `cirn-eval` scores.
Every exported variant (ONNX FP32/FP16/INT8 in ONNX Runtime on CPU, TensorRT engines on a GPU) runs the same
frames; a variant whose label agreement falls under its floor fails the export.

Floors (percent of pixels whose label matches PyTorch FP32):
- fp32 99.9: the same arithmetic in another order; only near-ties may flip (measured: 100.00 on the toy models).
- fp16 98: 11-bit mantissas move logits by ~1e-2, which flips pixels where the top two classes are that close:
  object boundaries, a few per mille on a trained model; 98 leaves room for less confident, less trained ones.
- int8 95: 8-bit activations move logits by a few percent of their range; boundary pixels flip (mmdeploy reports
  +-1 mIoU for int8 segmentation). Under 95 the calibration set or the quantised layers need attention.
"""
import os

import numpy as np
import onnx
import torch

from cirn.common.errors import CirnError
from cirn.runtime.latency import measure_latency
from cirn.runtime.ort import OrtSession
from cirn.runtime.outputs import resize_labels
from cirn.runtime.tensorrt import EngineRunner
from cirn.train.evaluate import ConfusionMatrix, save_json

from .choices import DEFAULT_FLOORS
from .frames import to_frame

_HEAD_OPS = ("ArgMax", "Cast", "Softmax")  # what follows the upsampled logits in each output kind


# ---------------------------------------------------------------- runners: frames (B, 3, H, W) -> outputs
def _logits_tensor(model):
    """Name of the upsampled-logits tensor of an exported graph: walk back from the output over the head ops."""
    producer = {out: node for node in model.graph.node for out in node.output}
    name = model.graph.output[0].name
    node = producer.get(name)
    while node is not None and node.op_type in _HEAD_OPS:
        name = node.input[0]
        node = producer.get(name)
    return name


def with_logits_output(model):
    """A copy of `model` that also outputs its (B, C, H, W) logits (for the logit comparison); None if it already
    outputs logits. The deployed file is never changed."""
    name = _logits_tensor(model)
    if name == model.graph.output[0].name:
        return None
    inferred = onnx.shape_inference.infer_shapes(model)
    elem_type = next((v.type.tensor_type.elem_type for v in inferred.graph.value_info if v.name == name),
                     onnx.TensorProto.FLOAT)
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    tapped.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
    return tapped


class OnnxRunner:
    """An exported .onnx through the runtime's ONNX Runtime session (CPU): `run(frames)` -> (output, logits),
    `time(frame)` -> ms. The session runs a copy of the graph that also outputs the upsampled logits."""

    def __init__(self, path):
        self.path = path
        tapped = with_logits_output(onnx.load(str(path)))
        self.session = OrtSession(tapped.SerializeToString() if tapped is not None else path, "cpu", name=str(path))

    def run(self, frames):
        outputs = self.session.run(frames)
        return outputs[0], outputs[-1]  # without a tap the output is the logits

    def time(self, frame, min_runs=5, min_seconds=0.5):
        """Median wall time (ms) of one call on `frame` (1, 3, H, W), after two warm-up calls."""
        return median_latency(lambda: self.session.run(frame), min_runs, min_seconds)


class EngineParityRunner:
    """A TensorRT engine through the runtime's EngineRunner: `run(frames)` -> (output, logits or None)."""

    def __init__(self, engine_path, output_kind):
        self.runner, self.output_kind = EngineRunner(engine_path), output_kind

    def run(self, frames):
        output = self.runner.run(frames)
        return output, (output if self.output_kind == "logits" else None)

    def time(self, frame, min_runs=20, min_seconds=0.5):
        return median_latency(lambda: self.runner.run(frame), min_runs, min_seconds)


def median_latency(call, min_runs=5, min_seconds=0.5):
    """Median ms of `call()` over at least min_runs calls and min_seconds (at most 200), after two warm-up calls."""
    timed = measure_latency(call, warmup=2, iterations=min_runs, seconds=min_seconds, max_iterations=200)
    return timed["latency_ms"]["p50"]


# ---------------------------------------------------------------- the check
def _labels_of(output, kind):
    """(B, H, W) labels of a graph output of kind labels | probs | logits."""
    return output.astype(np.int64) if kind == "labels" else np.asarray(output).argmax(axis=1)


def _score(confusion, labels, frames):
    """Add (B, H, W) labels to a confusion matrix, resized to each frame's label size as cirn-run writes them."""
    for pred, frame in zip(labels, frames, strict=True):
        if frame.label is None:  # your own footage without labels: agreement only, no mIoU
            continue
        pred = resize_labels(np.ascontiguousarray(pred, dtype=np.uint8), frame.label.shape)  # (h, w)
        confusion.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(frame.label.astype(np.int64)))


def _batches(frames, batch):
    return [frames[i:i + batch] for i in range(0, len(frames), batch)]


@torch.inference_mode()
def check_parity(deploy_model, variants, frames, sizes, protocol=19, floors=None, batch=1):
    """Run PyTorch and every exported variant on `frames` at each (height, width) of `sizes`; returns the report.

    variants: [{'name', 'precision', 'file', 'runner'}], runner with run(frames (B, 3, H, W)) -> (output, logits
        or None) and time(frame (1, 3, H, W)) -> ms. The first size is the export size: latency is measured there.
    frames: labelled Frames at sizes[0]. Other sizes resize them (bicubic).
    The report (JSON-ready): one row per variant and size with label agreement (%), max/mean |logit difference|,
    mIoU of PyTorch and of the export (labels nearest-resized to each label's size), latency (ms, batch 1), the
    floor and whether it passed; `passed` overall. Raises nothing: see require_parity.
    """
    floors = {**DEFAULT_FLOORS, **(floors or {})}
    kind = deploy_model.output
    num_classes = deploy_model.num_classes
    rows = []
    for height, width in sizes:
        sized = [f if f.image.shape[1:] == (height, width) else
                 type(f)(f.name, to_frame(f.image.transpose(1, 2, 0), (width, height)), f.label) for f in frames]
        reference = ConfusionMatrix(num_classes)
        per_variant = {v["name"]: {"agree": 0, "pixels": 0, "max_diff": 0.0, "sum_diff": 0.0, "values": 0,
                                   "confusion": ConfusionMatrix(num_classes)} for v in variants}
        for group in _batches(sized, batch):
            images = np.stack([f.image for f in group])  # (B, 3, H, W) uint8
            ref_logits = deploy_model.logits(torch.from_numpy(images)).numpy()  # (B, C, H, W)
            ref_labels = ref_logits.argmax(axis=1)  # (B, H, W)
            _score(reference, ref_labels, group)
            for variant in variants:
                acc = per_variant[variant["name"]]
                output, logits = variant["runner"].run(images)
                labels = _labels_of(output, kind)
                acc["agree"] += int((labels == ref_labels).sum())
                acc["pixels"] += labels.size
                if logits is not None:
                    diff = np.abs(np.asarray(logits, dtype=np.float32) - ref_logits)
                    acc["max_diff"] = max(acc["max_diff"], float(diff.max()))
                    acc["sum_diff"] += float(diff.sum())
                    acc["values"] += diff.size
                _score(acc["confusion"], labels, group)
        miou_ref = 100.0 * reference.miou(protocol)
        for variant in variants:
            acc = per_variant[variant["name"]]
            agreement = 100.0 * acc["agree"] / max(acc["pixels"], 1)
            floor = floors[variant["precision"]]
            rows.append({
                "name": variant["name"], "file": variant["file"], "precision": variant["precision"],
                "size": [height, width], "batch": batch, "label_agreement": agreement,
                "max_abs_logit_diff": acc["max_diff"] if acc["values"] else None,
                "mean_abs_logit_diff": acc["sum_diff"] / acc["values"] if acc["values"] else None,
                "miou_torch": miou_ref, "miou_export": 100.0 * acc["confusion"].miou(protocol),
                "floor": floor, "passed": agreement >= floor})
    first = (sizes[0][0], sizes[0][1])
    example = np.stack([f.image for f in frames[:1]])
    for variant in variants:
        ms = variant["runner"].time(example)
        for row in rows:
            if row["name"] == variant["name"] and tuple(row["size"]) == first:
                row["latency_ms"] = ms
    return {"output": kind, "images": len(frames), "protocol": protocol, "sizes": [list(s) for s in sizes],
            "floors": floors, "rows": rows, "passed": all(r["passed"] for r in rows)}


def require_parity(report):
    """Raise a CirnError naming each variant under its floor (the table says the rest)."""
    failed = [r for r in report["rows"] if not r["passed"]]
    if failed:
        worst = "; ".join(f"{r['name']} at {r['size'][0]}x{r['size'][1]}: {r['label_agreement']:.3f}% of labels "
                          f"match PyTorch, floor {r['floor']}%" for r in failed)
        raise CirnError(f"parity check failed ({worst}); nothing was written")


def _fmt(value, width, spec):
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def format_parity(report):
    """The report as a table: one line per variant and size."""
    header = (f"{'variant':<20}{'size':>10}{'batch':>6}{'agree %':>10}{'max|dlogit|':>13}{'mIoU torch':>12}"
              f"{'mIoU export':>13}{'ms/frame':>10}{'floor':>7}  ok")
    lines = [f"parity vs PyTorch FP32 on {report['images']} target images ({report['output']} output, "
             f"{report['protocol']}-class mIoU):", header, "-" * len(header)]
    for r in report["rows"]:
        lines.append(f"{r['name']:<20}{r['size'][0]:>5}x{r['size'][1]:<4}{r['batch']:>6}"
                     f"{r['label_agreement']:>10.3f}{_fmt(r['max_abs_logit_diff'], 13, '.2e')}"
                     f"{r['miou_torch']:>12.2f}{r['miou_export']:>13.2f}{_fmt(r.get('latency_ms'), 10, '.2f')}"
                     f"{r['floor']:>7.1f}  {'yes' if r['passed'] else 'NO'}")
    return "\n".join(lines)


def save_report(report, path):
    """Write parity.json (NaN mIoUs become null), readable by all like the models beside it."""
    save_json(report, path)
    os.chmod(path, 0o644)
