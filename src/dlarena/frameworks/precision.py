"""The precisions a cell may run in: what its weights are stored in, and what its matrix products compute in.

``bfloat16`` keeps weights and computes in bfloat16 (every tensor cast, as ``model.to(torch.bfloat16)``);
``mixed-bf16`` keeps float32 weights and optimizer state and computes the matrix products in bfloat16
through the framework's autocast or policy (``torch.autocast``, Keras' ``mixed_bfloat16``). The
``float16`` pair is the same with IEEE half precision, for GPUs. No framework is imported here: planning
reads it, and so do the worker's kernel and `dlarena verify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Precision:
    name: str
    weights: str  # the dtype of the parameters (and of the optimizer's state)
    compute: str  # the dtype the matrix products and convolutions run in

    @property
    def mixed(self) -> bool:
        return self.weights != self.compute

    @property
    def gpu_only(self) -> bool:
        """float16 runs on a GPU only (GPU_ONLY_REASON)."""
        return "float16" in (self.weights, self.compute)

    @property
    def host_dtype(self) -> np.dtype[np.floating]:
        """The NumPy dtype of the weights and inputs the kernel hands a framework: the weights' own,
        except bfloat16, which NumPy lacks; that comes as float32 and the framework rounds it."""
        return np.dtype("float32" if self.weights == "bfloat16" else self.weights)


PRECISIONS: dict[str, Precision] = {
    precision.name: precision
    for precision in (
        Precision("float32", "float32", "float32"),
        Precision("float16", "float16", "float16"),
        Precision("bfloat16", "bfloat16", "bfloat16"),
        Precision("mixed-bf16", "float32", "bfloat16"),
        Precision("mixed-fp16", "float32", "float16"),
        Precision("float64", "float64", "float64"),
    )
}


# Why float16 cells run on GPUs only: an x86 CPU without AVX512-FP16 (none of this project's machines
# has it; the environment record says whether one does) converts float16 to float32 for every product,
# so a float16 CPU time measures conversions, not a framework; and float16 training on a GPU is the
# setting people choose it for (tensor cores, with loss scaling under mixed-fp16).
GPU_ONLY_REASON = ("float16 and mixed-fp16 run on a GPU only (--devices cuda): without AVX512-FP16 a CPU"
                   " converts float16 to float32 for every product")


def precision(name: str) -> Precision:
    return PRECISIONS[name]


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32: what a framework
    holding them in bfloat16 stores and reads back. bfloat16 is float32's upper 16 bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def as_stored(values: np.ndarray, name: str) -> np.ndarray:
    """Canonical float32 weights as a framework in precision ``name`` holds them: rounded to bfloat16
    where its weights are bfloat16, otherwise in its weights' dtype (float32 values are exact in float64)."""
    kind = PRECISIONS[name]
    if kind.weights == "bfloat16":
        return round_to_bfloat16(values)
    return values.astype(kind.host_dtype)


def widened(array: Any) -> np.ndarray:
    """A framework's array or tensor on the host as NumPy (a copy), bfloat16 widened to float32, as the
    kernel and verify read it: every bfloat16 value is exact in float32 (bfloat16 is float32's upper half)."""
    host = np.array(array)
    return host.astype(np.float32) if host.dtype.name == "bfloat16" else host
