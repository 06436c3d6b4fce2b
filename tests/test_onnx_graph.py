"""The ONNX graph writer (frameworks/onnx_graph.py) on the transformer layers, run by ONNX Runtime
(and OpenVINO where installed) against the NumPy oracle.

``dlarena verify`` checks the same at the recipes' N(0, 0.02) weights, where every pre-activation is
so small that the exact and the tanh GELU agree to float32 rounding; these weights are large enough
for the two forms to differ by far more than the tolerance, so a swapped form fails here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import onnx
import onnxruntime as ort

from dlarena.frameworks import onnx_graph
from dlarena.frameworks.base import Unsupported
from dlarena.spec import Activation, Dense, Network, reference, transformers
from dlarena.spec.weights import canonical_batch, parameter_specs

BATCH = 3
# Large enough that GELU's inputs spread over |x| ~ 1 to 3, where its exact and tanh forms differ most (~5e-4).
WEIGHT_STD = 0.5
TOLERANCE = 5e-6  # relative to the largest logit; float32 rounding leaves under 1e-6 here
SIZE = transformers.TransformerSize(layers=2, width=8, heads=2, intermediate=16, vocab=30, positions=10, steps=6)
NETWORKS: dict[str, Network] = {
    "bert": transformers.bert(SIZE, classes=3),
    "gpt": transformers.gpt2(SIZE),
    "gelu": Network(input_shape=(4,), input_kind="vector", layers=(Dense(16), Activation("gelu"), Dense(3)), classes=3),
    "gelu_tanh": Network(input_shape=(4,), input_kind="vector", layers=(Dense(16), Activation("gelu_tanh"), Dense(3)),
                         classes=3),
}


def _weights(network: Network) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    return {spec.name: rng.normal(0.0, WEIGHT_STD, spec.shape) for spec in parameter_specs(network)}


def _graph(network: Network, weights: dict[str, np.ndarray], fused_attention: bool) -> onnx_graph.SpecGraph:
    graph = onnx_graph.SpecGraph(network, np.dtype(np.float32), BATCH, fused_attention)
    for name, (initializer, index) in graph.handles.items():
        graph.values[initializer][index] = weights[name].astype(np.float32)
    return graph


def _inputs(network: Network) -> np.ndarray:
    inputs, _ = canonical_batch(network, BATCH)
    return inputs


def _onnxruntime(serialized: bytes, inputs: np.ndarray, optimized: str | None = None) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized is not None:
        options.optimized_model_filepath = optimized
    session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    (logits,) = session.run([onnx_graph.OUTPUT_NAME], {onnx_graph.INPUT_NAME: inputs})
    return np.asarray(logits)


def _error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("fused_attention", [False, True], ids=["standard-ops", "contrib-attention"])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_onnxruntime_matches_the_oracle(name: str, fused_attention: bool) -> None:
    network = NETWORKS[name]
    weights, inputs = _weights(network), _inputs(network)
    got = _onnxruntime(_graph(network, weights, fused_attention).serialize(), inputs)
    assert _error(got, reference.forward(network, weights, inputs)) < TOLERANCE


def test_the_two_gelu_forms_differ_beyond_the_tolerance_at_these_weights() -> None:
    """What makes the test above catch a swapped GELU form."""
    weights = _weights(NETWORKS["gelu"])
    inputs = _inputs(NETWORKS["gelu"])
    exact, tanh = (reference.forward(NETWORKS[name], weights, inputs) for name in ("gelu", "gelu_tanh"))
    assert _error(tanh, exact) > 10 * TOLERANCE


@pytest.mark.parametrize("name", ["bert", "gpt"])
def test_openvino_matches_the_oracle(name: str) -> None:
    ov: Any = pytest.importorskip("openvino")
    network = NETWORKS[name]
    weights, inputs = _weights(network), _inputs(network)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(_graph(network, weights, False).serialize()), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    request.infer({0: inputs})
    assert _error(np.array(request.get_output_tensor().data), reference.forward(network, weights, inputs)) < TOLERANCE


def test_the_tied_output_reads_the_embedding_initializer() -> None:
    """One initializer serves the lookup and the transposed output; the tie owns no parameter."""
    graph = _graph(NETWORKS["gpt"], _weights(NETWORKS["gpt"]), True)
    table, _ = graph.handles["0.table"]
    readers = [node.op_type for node in graph.proto.graph.node if table in node.input]
    assert sorted(readers) == ["Gather", "Transpose"]
    assert set(graph.handles) == {spec.name for spec in parameter_specs(NETWORKS["gpt"])}


def test_onnxruntime_runs_its_fused_attention(tmp_path: Any) -> None:
    """The contrib Attention survives ONNX Runtime's optimiser; the standard ops are not fused into it."""
    network = NETWORKS["gpt"]
    weights, inputs = _weights(network), _inputs(network)
    ops: dict[bool, Counter[str]] = {}
    for fused in (False, True):
        path = tmp_path / f"optimized-{fused}.onnx"
        _onnxruntime(_graph(network, weights, fused).serialize(), inputs, optimized=str(path))
        ops[fused] = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert ops[True]["Attention"] == SIZE.layers and ops[True]["Softmax"] == 0
    assert ops[False]["Attention"] == 0 and ops[False]["Softmax"] == SIZE.layers


def test_an_activation_without_a_translation_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(onnx_graph._ACTIVATIONS, "gelu")
    with pytest.raises(Unsupported, match="activation 'gelu'"):
        onnx_graph.SpecGraph(NETWORKS["gelu"], np.dtype(np.float32), BATCH)
