"""The JAX backend (Flax NNX, frameworks/flax_nnx.py) on the transformer layers: the spec's parameters
(the tied table once), the NumPy oracle's logits in both precisions, attention dropout in training
only, and AdamW's decoupled weight decay. Networks are tiny twins, so every test compiles in seconds."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("optax")

import jax
import jax.numpy as jnp
from flax import nnx

from dlarena.frameworks import flax_nnx as fx
from dlarena.frameworks.base import StepRequest
from dlarena.frameworks.kernel import KernelRunner
from dlarena.frameworks.precision import as_stored
from dlarena.orchestrate.verify import BF16_FORWARD_FLOOR, BF16_FORWARD_TOLERANCE
from dlarena.spec import Init, Network, Optimizer, Recipe, Workload, reference, transformers
from dlarena.spec.layers import MultiHeadSelfAttention
from dlarena.spec.weights import canonical_batch, initial_weights

BATCH = 3
SIZE = transformers.TransformerSize(layers=1, width=8, heads=2, intermediate=16, vocab=30, positions=10, steps=6)
NETWORKS: dict[str, Network] = {"bert": transformers.bert(SIZE, classes=3), "gpt": transformers.gpt2(SIZE)}
ADAMW = Recipe(Optimizer("adamw", lr=1e-3, weight_decay=0.1), Init("normal", 0.02))
# The spec's tolerances in `dlarena verify` (orchestrate/verify.py): float32 and float64 forward.
FORWARD32_TOLERANCE, FORWARD64_TOLERANCE = 1e-4, 1e-10


@pytest.fixture(autouse=True)
def _restore_x64() -> Iterator[None]:
    """A float64 model turns JAX's x64 mode on for the process; the other tests expect it as it was."""
    before = jax.config.jax_enable_x64  # type: ignore[attr-defined]
    yield
    jax.config.update("jax_enable_x64", before)  # type: ignore[no-untyped-call]


def _workload(network: Network) -> Workload:
    return Workload(name="test", title="test", study="test", citation="test", network=network, recipe=ADAMW,
                    default_batch_size=BATCH)


@functools.cache  # one build (and compilation) per network and scenario for the whole module
def _runner(name: str, scenario: str) -> KernelRunner:
    return fx.Backend(threads=1).prepare(StepRequest(workload=_workload(NETWORKS[name]), scenario=scenario,
                                                     batch_size=BATCH, device="cpu", threads=1,
                                                     precision="float32", seed=0))


def _error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("name", NETWORKS)
def test_parameters_are_the_spec_s_with_the_tied_table_once(name: str) -> None:
    runner = _runner(name, "infer")
    assert runner.trainable_params() == NETWORKS[name].params


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("name", NETWORKS)
def test_logits_are_the_oracle_s(name: str, precision: str) -> None:
    """float32 runs jax.nn.dot_product_attention, float64 Flax's unfused form (the fused softmax
    is float32 whatever the inputs): each as close to the oracle as verify demands."""
    network = NETWORKS[name]
    checker = fx.Backend(threads=1).checker(_workload(network), "cpu", precision)
    weights = initial_weights(network, ADAMW.init, seed=0)
    checker.load_weights({key: value.astype(precision) for key, value in weights.items()})
    inputs, _ = canonical_batch(network, BATCH)
    tolerance = FORWARD64_TOLERANCE if precision == "float64" else FORWARD32_TOLERANCE
    assert _error(checker.forward(inputs), reference.forward(network, weights, inputs)) < tolerance


@pytest.mark.parametrize("precision", ["bfloat16", "mixed-bf16"])
@pytest.mark.parametrize("name", NETWORKS)
def test_bfloat16_logits_are_bfloat16_s(name: str, precision: str) -> None:
    """bfloat16 weights and compute, or float32 weights computing in bfloat16 (Flax's ``dtype`` beside
    ``param_dtype``): logits farther from the oracle than float32 rounding leaves them and within
    verify's bfloat16 bound, the products' operands read back from the program as bfloat16, the weights
    stored as the precision says and read back exactly."""
    network = NETWORKS[name]
    checker = fx.Backend(threads=1).checker(_workload(network), "cpu", precision)
    stored = {key: as_stored(value, precision) for key, value in initial_weights(network, ADAMW.init, seed=0).items()}
    checker.load_weights(stored)
    inputs, _ = canonical_batch(network, BATCH)
    logits = checker.forward(inputs)
    assert logits.dtype == np.float32
    error = _error(logits, reference.forward(network, {k: v.astype(np.float64) for k, v in stored.items()}, inputs))
    assert BF16_FORWARD_FLOOR < error < BF16_FORWARD_TOLERANCE
    parity = checker.parity()
    assert parity.details["matmul_dtype"] == "bfloat16"
    assert parity.dtype == ("bfloat16" if precision == "bfloat16" else "float32")
    exported = checker.export_weights()
    assert all(np.array_equal(exported[key], stored[key]) for key in stored)


def test_bfloat16_training_keeps_bfloat16_weights() -> None:
    runner = fx.Backend(threads=1).prepare(StepRequest(workload=_workload(NETWORKS["gpt"]), scenario="train",
                                                       batch_size=BATCH, device="cpu", threads=1,
                                                       precision="bfloat16", seed=0))
    before = runner.export_weights()
    runner.step()
    runner.sync()
    assert np.isfinite(float(runner.last))
    assert runner.parity().dtype == "bfloat16"
    assert any(not np.array_equal(value, before[key]) for key, value in runner.export_weights().items())


def test_attention_drops_in_training_only() -> None:
    rngs = nnx.Rngs(params=0, dropout=0)
    attention = fx.SelfAttention(nnx.Linear(8, 24, rngs=rngs), nnx.Linear(8, 8, rngs=rngs),
                                 MultiHeadSelfAttention(2, causal=True, dropout=0.5), rngs)
    x = jnp.asarray(np.random.RandomState(0).standard_normal((BATCH, 5, 8)), jnp.float32)
    inference = nnx.view(attention, deterministic=True)
    assert np.array_equal(inference(x), inference(x))
    first, second = attention(x), attention(x)  # a new mask each call
    assert not np.allclose(first, inference(x)) and not np.allclose(first, second)


@pytest.mark.parametrize("name", NETWORKS)
def test_train_step_updates_every_parameter_with_a_finite_loss(name: str) -> None:
    runner = _runner(name, "train")
    before = runner.export_weights()
    runner.step()
    runner.sync()
    assert np.isfinite(float(runner.last))
    after = runner.export_weights()
    assert sorted(after) == sorted(before)
    for key in before:  # the tied table ("0.table" of gpt) among them
        assert not np.array_equal(after[key], before[key]), key


def test_adamw_decays_decoupled_from_the_gradient() -> None:
    """With a zero gradient Adam's own update is zero, so AdamW moves each weight by exactly
    -lr * weight_decay * w; PyTorch's L2 form would push wd * w through Adam (about lr in size)."""
    model = _runner("gpt", "train").model
    assert isinstance(model, fx.Model)
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    updates, _ = model.tx.update(jax.tree.map(jnp.zeros_like, params), model.tx.init(params), params)
    optimizer = ADAMW.optimizer
    np.testing.assert_allclose(updates["w"], -optimizer.lr * optimizer.weight_decay * params["w"], rtol=1e-6)
