"""The transformer layers of the spec and their NumPy oracle, against answers worked out by hand.
No framework is imported: the frameworks are checked against this oracle (dlarena verify)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dlarena.spec import Dense, Embedding, Network, SpecError
from dlarena.spec.catalogue import get_workload
from dlarena.spec.layers import (
    Activation,
    LayerNorm,
    MultiHeadSelfAttention,
    PositionEmbedding,
    SelectToken,
    TiedOutput,
    TokenTypeEmbedding,
)
from dlarena.spec.reference import forward
from dlarena.spec.weights import canonical_batch, canonical_weights, parameter_specs


def _vectors(layers: tuple[object, ...], width: int, steps: int, vocab: int = 11) -> Network:
    """Tokens embedded at ``width``, then ``layers``, then per-token logits: the oracle's layers in a network."""
    return Network(input_shape=(steps,), input_kind="tokens", vocab=vocab, classes=vocab, label_kind="token",
                   layers=(Embedding(vocab, width), *layers, Dense(vocab)))  # type: ignore[arg-type]


def _identity_head(network: Network, weights: dict[str, np.ndarray]) -> None:
    """Make the last Dense the identity on the first ``width`` logits, so the logits show its input."""
    path = str(len(network.layers) - 1)
    kernel = np.zeros_like(weights[f"{path}.kernel"])
    np.fill_diagonal(kernel, 1.0)
    weights[f"{path}.kernel"], weights[f"{path}.bias"] = kernel, np.zeros_like(weights[f"{path}.bias"])


def test_gelu_exact_and_tanh_forms_at_known_points() -> None:
    """x Phi(x) at 1 is 0.8413447460685429; GPT-2's tanh form gives 0.8411919906082768 (computed by hand
    from 0.5 (1 + tanh(sqrt(2/pi) (1 + 0.044715)))): the spec keeps them apart."""
    network = _vectors((Activation("gelu"),), width=3, steps=1)
    tanh_network = _vectors((Activation("gelu_tanh"),), width=3, steps=1)
    weights = canonical_weights(network)
    _identity_head(network, weights)
    weights["0.table"] = np.tile(np.array([1.0, -1.0, 2.0], dtype=np.float32), (11, 1))
    tokens = np.zeros((1, 1), dtype=np.int64)
    exact, approximate = forward(network, weights, tokens)[0, 0, :3], forward(tanh_network, weights, tokens)[0, 0, :3]
    phi = [0.5 * (1 + math.erf(x / math.sqrt(2))) for x in (1.0, -1.0, 2.0)]
    assert exact == pytest.approx([1.0 * phi[0], -1.0 * phi[1], 2.0 * phi[2]], rel=1e-12)
    assert approximate[0] == pytest.approx(0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * 1.044715)), rel=1e-12)
    assert abs(exact[0] - approximate[0]) > 1e-4


def test_layer_norm_gives_each_position_mean_beta_and_deviation_gamma() -> None:
    network = _vectors((LayerNorm(eps=0.0),), width=8, steps=5)
    weights = canonical_weights(network)
    _identity_head(network, weights)
    weights["1.gamma"], weights["1.beta"] = np.full(8, 2.0, np.float32), np.full(8, 0.5, np.float32)
    inputs, _ = canonical_batch(network, 3)
    out = forward(network, weights, inputs)[..., :8]
    assert np.allclose(out.mean(axis=-1), 0.5) and np.allclose(out.std(axis=-1), 2.0)


def test_attention_with_zero_queries_averages_the_values_it_may_see() -> None:
    """Zero query and key weights make every score equal: each step's output is the mean of the values
    of the steps it attends to, all of them, or with a causal mask those up to itself."""
    steps, width = 4, 6
    for causal in (False, True):
        network = _vectors((MultiHeadSelfAttention(heads=2, causal=causal),), width=width, steps=steps)
        weights = canonical_weights(network)
        _identity_head(network, weights)
        qkv = weights["1.qkv_kernel"]
        qkv[:, : 2 * width] = 0.0
        weights["1.qkv_bias"][: 2 * width] = 0.0
        weights["1.out_kernel"], weights["1.out_bias"] = np.eye(width, dtype=np.float32), np.zeros(width, np.float32)
        inputs, _ = canonical_batch(network, 2)
        values = weights["0.table"][inputs].astype(np.float64) @ qkv[:, 2 * width:] + weights["1.qkv_bias"][2 * width:]
        seen = np.tril(np.ones((steps, steps))) if causal else np.ones((steps, steps))
        expected = (seen / seen.sum(axis=1, keepdims=True)) @ values
        assert np.allclose(forward(network, weights, inputs)[..., :width], expected)


def test_a_causal_step_ignores_later_tokens() -> None:
    network = _vectors((MultiHeadSelfAttention(heads=2, causal=True),), width=6, steps=5)
    weights = canonical_weights(network)
    inputs, _ = canonical_batch(network, 1)
    changed = inputs.copy()
    changed[0, 3:] = (changed[0, 3:] + 1) % 11
    before, after = forward(network, weights, inputs), forward(network, weights, changed)
    assert np.allclose(before[0, :3], after[0, :3]) and not np.allclose(before[0, 3:], after[0, 3:])


def test_positions_types_and_the_selected_token() -> None:
    layers = (PositionEmbedding(positions=10), TokenTypeEmbedding(types=2))
    network = _vectors(layers, width=4, steps=6)
    assert TokenTypeEmbedding(2).type_ids(6) == [0, 0, 0, 1, 1, 1]
    weights = canonical_weights(network)
    _identity_head(network, weights)
    inputs, _ = canonical_batch(network, 2)
    expected = weights["0.table"][inputs] + weights["1.table"][:6] + weights["2.table"][[0, 0, 0, 1, 1, 1]]
    assert np.allclose(forward(network, weights, inputs)[..., :4], expected)
    with pytest.raises(SpecError, match="10 positions, the sequence has 12 steps"):
        _vectors(layers, width=4, steps=12)
    pooled = Network(input_shape=(6,), input_kind="tokens", vocab=11, classes=4,
                     layers=(Embedding(11, 4), SelectToken(0), Dense(4)))
    assert pooled.output_shape == (4,)


def test_the_tied_output_multiplies_by_the_embedding_and_owns_no_parameter() -> None:
    network = Network(input_shape=(3,), input_kind="tokens", vocab=7, classes=7, label_kind="token",
                      layers=(Embedding(7, 5), TiedOutput(7, tied_to="0")))
    assert network.params == 7 * 5 and [spec.name for spec in parameter_specs(network)] == ["0.table"]
    weights = canonical_weights(network)
    inputs, _ = canonical_batch(network, 2)
    table = weights["0.table"].astype(np.float64)
    assert np.allclose(forward(network, weights, inputs), table[inputs] @ table.T)
    with pytest.raises(SpecError, match="not a top-level Embedding"):
        Network(input_shape=(3,), input_kind="tokens", vocab=7, classes=7, label_kind="token",
                layers=(Embedding(7, 5), TiedOutput(7, tied_to="1")))
    with pytest.raises(SpecError, match="tied to an Embedding of 7 words of width 5"):
        Network(input_shape=(3,), input_kind="tokens", vocab=7, classes=7, label_kind="token",
                layers=(Embedding(7, 5), Dense(4), TiedOutput(7, tied_to="0")))


def test_heads_must_divide_the_width() -> None:
    with pytest.raises(SpecError, match="width 6 does not split into 4 heads"):
        _vectors((MultiHeadSelfAttention(heads=4),), width=6, steps=2)


@pytest.mark.parametrize("name", ["bert-base", "gpt2-124m"])
def test_a_transformer_step_costs_six_flops_per_parameter_per_token_and_its_attention(name: str) -> None:
    """Kaplan et al. (2020): training costs about 6 N FLOPs per token, N the non-embedding parameters,
    plus the attention scores (12 L T d per token, forward and backward); within 5% of that here."""
    workload = get_workload(name)
    network, batch = workload.network, workload.default_batch_size
    steps, width, blocks = network.input_shape[0], 768, 12
    tables = sum(spec.shape[0] * spec.shape[1] for spec in parameter_specs(network) if spec.role == "table")
    non_embedding = workload.params - tables
    tokens = batch * steps
    lm_head = 6 * width * network.vocab if name == "gpt2-124m" else 0  # the tied output's matrix product
    expected = tokens * (6 * non_embedding + 12 * blocks * steps * width + lm_head)
    assert workload.flops("train", batch) == pytest.approx(expected, rel=0.05)


def test_the_small_transformers_run_through_the_oracle_to_finite_logits() -> None:
    for name in ("bert-base-small", "gpt2-124m-small"):
        network = get_workload(name).network
        inputs, _ = canonical_batch(network, 2)
        logits = forward(network, canonical_weights(network), inputs)
        assert logits.shape == (2, *network.output_shape) and np.isfinite(logits).all()


def test_a_framework_whose_module_builds_no_transformer_says_so_before_any_worker() -> None:
    from dlarena.frameworks.registry import FRAMEWORKS, transformer_builders

    layers = get_workload("gpt2-124m-small").network.layer_types()
    assert FRAMEWORKS["torch"].unsupported_reason(layers, "train") is None
    reason = FRAMEWORKS["theano"].unsupported_reason(layers, "train")
    assert reason is not None and "does not build the transformer layers" in reason and "torch" in reason
    assert "torch" in transformer_builders() and "theano" not in transformer_builders()
    # the other networks are not affected
    assert FRAMEWORKS["theano"].unsupported_reason(get_workload("fcn5-small").network.layer_types(), "train") is None


def test_the_report_sets_each_lower_precision_beside_float32_and_flags_a_slower_one(tmp_path: Path) -> None:
    from dlarena import api
    from dlarena.plan.cell import Cell
    from dlarena.store.database import Store
    from stored_runs import run, timed

    store = Store.open(tmp_path / "r.db")
    cells = [(Cell("torch", "gpt2-124m-small", "train", 8, 1, precision=precision), timed(median, 3))
             for precision, median in (("float32", 0.010), ("bfloat16", 0.005), ("mixed-bf16", 0.020))]
    run(store, cells)
    store.close()
    report = api.report(db=tmp_path / "r.db")
    assert "## Lower precision against float32" in report
    assert "| torch | gpt2-124m-small | train | 8 | 1 | bfloat16 | 10 ms | 5 ms | 2.00x |" in report
    assert "| mixed-bf16 | 10 ms | 20 ms | 0.50x *slower* |" in report
    # the cells of each precision keep rows of their own in every table
    assert "| torch (bfloat16) |" in report and "| torch (mixed-bf16) |" in report


def test_the_report_sets_a_frameworks_batch_sizes_side_by_side_as_latency_against_throughput(tmp_path: Path) -> None:
    from dlarena import api
    from dlarena.plan.cell import Cell
    from dlarena.store.database import Store
    from stored_runs import run, timed

    store = Store.open(tmp_path / "r.db")
    # batch 1 at 1 ms: 1,000 samples/s; batch 8 at 4 ms: 2,000 samples/s, the most
    run(store, [(Cell("torch", "gpt2-124m-small", "infer", batch, 1), timed(median, 3))
                for batch, median in ((8, 0.004), (1, 0.001))])
    store.close()
    report = api.report(db=tmp_path / "r.db")
    assert "## Latency and throughput" in report
    first, second = (report.index(f"| torch | gpt2-124m-small | 1 | {batch} |") for batch in (1, 8))
    assert first < second  # smallest batch first
    # 123 steps: a p90 (100 needed), no p99 (1,000 needed)
    assert "| torch | gpt2-124m-small | 1 | 8 | 4 ms | 4.15 ms |  | 2,000 *most* |" in report
