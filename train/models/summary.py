"""Parameter counts and forward cost of a named model, computed on the meta device (no weights, no real compute)."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from .build import create_model
from .discriminator import FCDiscriminator


def _count(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def _gflops(fn, *args):
    """GFLOPs (2 x multiply-accumulate of convs and matmuls) of fn(*args), and its output."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return counter.get_total_flops() / 1e9, out


def summarize(model_name, num_classes=19, height=512, width=1024, num_attention=2, base_width=16):
    """Parameters of the parts of a model and GFLOPs of one H x W frame (batch 1), as a dict.

    Built on the meta device: shapes only, so ResNet-101 at 512x1024 takes about a second on a laptop CPU.
    """
    with torch.device("meta"):
        model = create_model(model_name, num_classes, num_attention, base_width=base_width).eval()
        discriminator = FCDiscriminator(num_classes)
        image = torch.empty(1, 3, height, width)
    with torch.no_grad():
        gflops_backbone, features = _gflops(model.backbone, image)
        gflops_c, _ = _gflops(model.classifier_c, features)
        gflops_fused, _ = _gflops(model.fused, image)
    return {
        "model": model_name,
        "backbone_name": model.backbone.name,
        "num_classes": num_classes,
        "num_attention": num_attention,
        "attention_scales": tuple(m.scale for m in model.attention),
        "output_stride": model.output_stride,
        "input_size_hw": (height, width),
        "feature_size_hw": tuple(features.shape[-2:]),
        "params_backbone": _count(model.backbone),
        "params_classifier": _count(model.classifier_c),
        "params_backbone_c": _count(model.backbone, model.classifier_c),
        "params_acm": _count(model.classifier_acm, model.attention),
        "params_fused": _count(model),
        "params_discriminator": _count(discriminator),
        "gflops_backbone_c": gflops_backbone + gflops_c,
        "gflops_acm": gflops_fused - gflops_backbone - gflops_c,
        "gflops_fused": gflops_fused,
    }


def describe(model_name, num_classes=19, height=512, width=1024, num_attention=2, base_width=16):
    """`summarize` as printable text (backs `cirn-train describe`)."""
    s = summarize(model_name, num_classes, height, width, num_attention, base_width)
    scales = ", ".join(map(str, s["attention_scales"])) or "none"
    (h, w), (fh, fw) = s["input_size_hw"], s["feature_size_hw"]
    rows = [
        f"{s['model']}: {s['backbone_name']}, {s['num_classes']} classes, output stride {s['output_stride']}, "
        f"K={s['num_attention']} attention modules (pooling scales: {scales})",
        f"input {h}x{w} -> features {fh}x{fw}",
        "parameters",
        f"  backbone                    {s['params_backbone']:>14,}",
        f"  backbone + C                {s['params_backbone_c']:>14,}",
        f"  ACM (C copy + {s['num_attention']} modules)     {s['params_acm']:>14,}"
        + (f"  ({s['params_acm'] - s['params_classifier']:,} in the attention modules)" if s['num_attention'] else ""),
        f"  fused network (inference)   {s['params_fused']:>14,}",
        f"  discriminator (training)    {s['params_discriminator']:>14,}",
        f"forward GFLOPs (2 x MAC) at {h}x{w}, batch 1",
        f"  backbone + C                {s['gflops_backbone_c']:>14,.1f}",
        f"  ACM                         {s['gflops_acm']:>14,.1f}",
        f"  fused network               {s['gflops_fused']:>14,.1f}",
    ]
    return "\n".join(rows)
