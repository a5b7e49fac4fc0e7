"""The choices and defaults of an export, defined once: the exporter's modules and cirn-export's options read them.

No torch or onnx here: the CLI imports this module whenever a cirn command starts (cirn-run on a deploy-only
install included). Why each parity floor is where it is: export/parity.py.
"""
# The first of each tuple is the default.
FORMATS = ("onnx", "tensorrt", "all")
OUTPUTS = ("labels", "probs", "logits")
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_EXPORTER = "dynamo"
# Minimum % of a variant's labels equal to PyTorch FP32's; below it the export fails and writes nothing.
DEFAULT_FLOORS = {"fp32": 99.9, "fp16": 98.0, "int8": 95.0}
