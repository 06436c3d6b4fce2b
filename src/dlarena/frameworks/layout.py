"""Conversions between canonical weights (spec/weights.py) and the layouts frameworks use.

NumPy only, shared by every framework module so that no module re-derives a permutation. Each
function converts canonical -> framework; its ``inverse=True`` form converts back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlarena.spec import Shape
from dlarena_runner.layout import GRU_CANONICAL as GRU_CANONICAL
from dlarena_runner.layout import LSTM_CANONICAL as LSTM_CANONICAL
from dlarena_runner.layout import reorder_gates as reorder_gates

# Gate orders of the libraries that differ from the canonical ones (dlarena_runner.layout).
LSTM_ONNX = "iofg"  # ONNX LSTM: input, output, forget, cell
GRU_KERAS = "zrn"  # Keras / TensorFlow GRU (z, r, h); ONNX GRU is also z, r, h


def conv_kernel_hwio(kernel: np.ndarray, inverse: bool = False) -> np.ndarray:
    """``(out, in, kh, kw)`` <-> ``(kh, kw, in, out)`` (TensorFlow, Keras, Flax)."""
    return kernel.transpose(2, 3, 1, 0) if not inverse else kernel.transpose(3, 2, 0, 1)


def flattened_rows_channels_last(kernel: np.ndarray, chw: Shape, inverse: bool = False) -> np.ndarray:
    """Permute the rows of a Dense kernel that follows a Flatten of a ``(C, H, W)`` feature map.

    Canonical rows are in ``(C, H, W)`` order; a channels-last framework flattens ``(H, W, C)``.
    """
    channels, height, width = chw
    out = kernel.shape[1]
    if not inverse:
        return kernel.reshape(channels, height, width, out).transpose(1, 2, 0, 3).reshape(-1, out)
    return kernel.reshape(height, width, channels, out).transpose(2, 0, 1, 3).reshape(-1, out)


def images_channels_last(batch: np.ndarray, inverse: bool = False) -> np.ndarray:
    """``(N, C, H, W)`` <-> ``(N, H, W, C)``; other ranks are returned as they are."""
    if batch.ndim != 4:
        return batch
    return np.ascontiguousarray(batch.transpose(0, 2, 3, 1) if not inverse else batch.transpose(0, 3, 1, 2))


def max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max|actual - expected| / max|expected|``: the error relative to the array's scale.

    Norm-wise rather than element-wise, because element-wise ratios explode where the expected value
    crosses zero while float32 rounding is relative to the magnitudes being summed.
    """
    actual64, expected64 = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual64.shape != expected64.shape:
        return float("inf")
    scale = float(np.max(np.abs(expected64))) if expected64.size else 0.0
    diff = float(np.max(np.abs(actual64 - expected64))) if expected64.size else 0.0
    if scale == 0.0:
        return diff
    return diff / scale


def same_keys(names: Sequence[str], weights: dict[str, np.ndarray]) -> None:
    """Raise a clear error when a framework's exported names differ from the canonical ones."""
    missing, extra = sorted(set(names) - set(weights)), sorted(set(weights) - set(names))
    if missing or extra:
        raise ValueError(f"canonical weights differ: missing {missing[:5]}, unexpected {extra[:5]}")
