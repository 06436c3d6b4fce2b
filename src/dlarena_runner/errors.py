"""The two ways a framework declines a cell, shared by every worker whatever its interpreter.

``dlarena.frameworks.base`` re-exports them, so a framework module on the host's kernel and one on the
old-interpreter kernel (``dlarena_runner.model``) raise the same classes. Python 3.6, stdlib only.
"""


class Unsupported(Exception):
    """The framework cannot express this cell (a layer, a scenario, a device, a recipe field): ``unsupported``."""


class Unavailable(Exception):
    """The framework or the device is not there: ``unavailable``."""


# How frameworks say they ran out of memory, in the exceptions they raise: PyTorch ("CUDA out of
# memory", OutOfMemoryError), TensorFlow (ResourceExhaustedError, "OOM when allocating"), XLA/JAX
# ("RESOURCE_EXHAUSTED: Out of memory"), ONNX Runtime ("Failed to allocate memory").
OUT_OF_MEMORY_MARKERS = ("out of memory", "OutOfMemoryError", "ResourceExhaustedError", "OOM when allocating",
                         "RESOURCE_EXHAUSTED", "Failed to allocate memory")
