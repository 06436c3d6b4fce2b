"""The Keras 3 module's parameter handles, without Keras: how MultiHeadAttention's per-head variables
make the canonical fused attention parameters (spec/weights.py), and back; and, in a process of its
own, the transformers through model.save and load_model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlarena.frameworks import keras3
from dlarena.spec.layers import ACTIVATIONS

WIDTH, HEADS = 6, 3
SIZE = WIDTH // HEADS


def _current(values: list[np.ndarray]) -> list[np.ndarray]:
    return values


def test_qkv_kernel_blocks_are_query_key_value_head_by_head() -> None:
    # Stand-ins for Keras variables: anything with a shape. Keras' EinsumDense kernels are (D, heads, size).
    kernels = [np.random.RandomState(seed).normal(size=(WIDTH, HEADS, SIZE)) for seed in range(3)]
    handle = keras3._Blocks(tuple(kernels), (WIDTH, WIDTH))
    fused = handle.join(kernels)
    assert fused.shape == (WIDTH, 3 * WIDTH)
    for block, kernel in enumerate(kernels):  # blocks q, k, v; inside each, head h owns h*size onward
        for head in range(HEADS):
            start = block * WIDTH + head * SIZE
            np.testing.assert_array_equal(fused[:, start:start + SIZE], kernel[:, head, :])
    for part, kernel in zip(handle.split(fused, lambda: _current(kernels)), kernels, strict=True):
        np.testing.assert_array_equal(part, kernel)


def test_out_kernel_rows_are_head_by_head() -> None:
    kernel = np.arange(HEADS * SIZE * WIDTH, dtype=np.float64).reshape(HEADS, SIZE, WIDTH)
    handle = keras3._Blocks((kernel,), (WIDTH, WIDTH))
    canonical = handle.join([kernel])
    for head in range(HEADS):
        np.testing.assert_array_equal(canonical[head * SIZE:(head + 1) * SIZE], kernel[head])
    np.testing.assert_array_equal(handle.split(canonical, lambda: [kernel])[0], kernel)


def test_row_handle_writes_one_row_and_keeps_the_other() -> None:
    bias = np.zeros((2, 4))
    handle = keras3._Row(bias, 1)
    (written,) = handle.split(np.ones(4), lambda: [bias])
    np.testing.assert_array_equal(written, [[0.0] * 4, [1.0] * 4])
    np.testing.assert_array_equal(handle.join([written]), np.ones(4))


def test_every_spec_activation_has_a_keras_spelling() -> None:
    assert set(keras3._ACTIVATIONS) == set(ACTIVATIONS)
    # The spec's "gelu" is the exact (erf) GELU, "gelu_tanh" the approximation.
    assert keras3._ACTIVATIONS["gelu"] == ("gelu", {"approximate": False})
    assert keras3._ACTIVATIONS["gelu_tanh"] == ("gelu", {"approximate": True})


# Saved with model.save and read back with load_model in a fresh process (Keras fixes its backend at
# its first import): every layer and activation of both transformers, on JAX.
_SAVE_AND_LOAD = """
import numpy as np, keras
from dlarena.frameworks import keras3
from dlarena.frameworks.base import StepRequest
from dlarena.spec.catalogue import get_workload
backend = keras3.Backend(threads=1, backend="jax")
for name in ("bert-base-small", "gpt2-124m-small"):
    workload = get_workload(name)
    model = backend.prepare(StepRequest(workload=workload, scenario="infer", batch_size=2, device="cpu",
                                        threads=1, precision="float32", seed=0)).model.model
    model.save(f"{name}.keras")
    custom = {"PositionAdd": keras3._position_add_class(), "TokenTypeAdd": keras3._token_type_add_class()}
    loaded = keras.models.load_model(f"{name}.keras", custom_objects=custom, compile=False)
    tokens = np.random.RandomState(0).randint(0, 100, size=(2, *workload.network.input_shape)).astype("int32")
    print(name, float(np.max(np.abs(np.asarray(loaded(tokens)) - np.asarray(model(tokens))))))
"""


def test_transformers_save_and_load(tmp_path: Path) -> None:
    """model.save writes the custom layers (their get_config) and the GELUs (registered functions)."""
    pytest.importorskip("keras")
    pytest.importorskip("jax")
    result = subprocess.run([sys.executable, "-c", _SAVE_AND_LOAD], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["bert-base-small", "0.0", "gpt2-124m-small", "0.0"]
