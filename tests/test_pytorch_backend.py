"""The PyTorch backend against the spec: structure, parameter counts, steps, init, parity, errors.

It runs on the kernel (frameworks/kernel.py): a runner is a KernelRunner whose ``model`` is the
module's Model, with the ``nn.Module`` tree in ``model.net`` and the last step's output in ``last``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

pytest.importorskip("torch")

import torch

from dlarena.frameworks import pytorch as pt
from dlarena.frameworks.base import StepRequest, Unavailable, Unsupported
from dlarena.frameworks.kernel import KernelRunner
from dlarena.frameworks.registry import load_backend
from dlarena.spec import (
    GRU,
    LSTM,
    Activation,
    AvgPool2D,
    BatchNorm,
    Concat,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    Init,
    MaxPool2D,
    Network,
    Optimizer,
    Recipe,
    Residual,
    Workload,
    transformers,
)

try:
    from dlarena.spec.catalogue import CATALOGUE
except ModuleNotFoundError as error:  # written concurrently; the catalogue test waits for it
    if error.name != "dlarena.spec.catalogue":
        raise
    CATALOGUE = {}

BATCH = 4
THREADS = 2
SGD = Recipe(Optimizer("sgd", lr=0.1, momentum=0.9), Init("glorot_uniform"))

# Small networks that between them use every layer type and every option the builder translates.
# A layer followed by batch norm has no bias (batch norm cancels it, so its gradient would be ~0).
NETWORKS: dict[str, Network] = {
    "mlp": Network(
        input_shape=(20,),
        input_kind="vector",
        layers=(
            Dense(32, bias=False), BatchNorm(eps=1e-3, momentum=0.01), Activation("relu"), Dropout(0.5),
            Dense(16), Activation("sigmoid"), Dense(16), Activation("tanh"), Dense(10),
        ),
        classes=10,
    ),
    "cnn": Network(
        input_shape=(3, 16, 16),
        input_kind="image",
        layers=(
            Conv2D(8, 3, padding=1, bias=False), BatchNorm(), Activation("relu"),
            MaxPool2D(3, stride=2, padding=1),  # 16 -> 8
            Conv2D(16, (3, 5), stride=(2, 1), padding=(1, 2)), Activation("tanh"),  # (4, 8)
            AvgPool2D(2, padding=1),  # (3, 5), padding counted in the average
            Flatten(), Dense(10),
        ),
        classes=10,
    ),
    "resnet": Network(
        input_shape=(4, 8, 8),
        input_kind="image",
        layers=(
            Conv2D(8, 3, padding=1, bias=False), BatchNorm(), Activation("relu"),
            Residual(body=(
                Conv2D(8, 3, padding=1, bias=False), BatchNorm(), Activation("relu"),
                Conv2D(8, 3, padding=1, bias=False), BatchNorm(),
            )),
            Activation("relu"),
            Residual(
                body=(Conv2D(16, 3, stride=2, padding=1, bias=False), BatchNorm()),
                shortcut=(Conv2D(16, 1, stride=2, bias=False), BatchNorm()),
            ),
            Concat(branches=(
                (Conv2D(4, 1),),
                (Conv2D(6, 3, padding=1), Activation("relu")),
                (MaxPool2D(3, stride=1, padding=1), Conv2D(2, 1)),
            )),
            GlobalAvgPool2D(), Dense(10),
        ),
        classes=10,
    ),
    "lstm-lm": Network(
        input_shape=(12,),
        input_kind="tokens",
        vocab=50,
        layers=(Embedding(50, 16), LSTM(24, layers=2), Dropout(0.2), Dense(50)),
        classes=50,
        label_kind="token",
    ),
    "lstm-last": Network(
        input_shape=(6, 5),
        input_kind="vector",
        layers=(LSTM(12, layers=2, return_sequences=False), Dense(4)),
        classes=4,
    ),
    "gru-last": Network(
        input_shape=(10,),
        input_kind="tokens",
        vocab=40,
        layers=(Embedding(40, 8), GRU(16, layers=2, return_sequences=False), Dense(3)),
        classes=3,
    ),
    "gru-seq": Network(
        input_shape=(7,),
        input_kind="tokens",
        vocab=30,
        layers=(Embedding(30, 8), GRU(6, layers=2), Flatten(), Dense(5)),
        classes=5,
    ),
    # Every transformer layer: embeddings of tokens, positions and types, layer norm, both GELUs,
    # bidirectional and causal attention, the selected token and the tied output.
    "bert": transformers.bert(transformers.TransformerSize(layers=1, width=8, heads=2, intermediate=16, vocab=30,
                                                           positions=10, steps=6), classes=3),
    "gpt": transformers.gpt2(transformers.TransformerSize(layers=2, width=8, heads=2, intermediate=16, vocab=30,
                                                          positions=10, steps=6)),
}
LSTM_NETWORKS = ("lstm-lm", "lstm-last")


def workload(network: Network, recipe: Recipe = SGD) -> Workload:
    return Workload(
        name="test", title="test", study="test", citation="test", network=network, recipe=recipe,
        default_batch_size=BATCH,
    )


def request(
    network: Network,
    scenario: str = "train",
    recipe: Recipe = SGD,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "float32",
    batch_size: int = BATCH,
) -> StepRequest:
    return StepRequest(
        workload=workload(network, recipe), scenario=scenario, batch_size=batch_size, device=device,
        threads=THREADS, precision=precision, seed=seed,
    )


def prepare(network: Network, scenario: str = "train", **kwargs: Any) -> KernelRunner:
    return pt.Backend(threads=THREADS).prepare(request(network, scenario, **kwargs))


def net(runner: KernelRunner) -> torch.nn.Module:
    assert isinstance(runner.model, pt.Model)
    return runner.model.net


def final_loss(runner: KernelRunner) -> float:
    assert runner.scenario == "train" and isinstance(runner.last, torch.Tensor)
    return runner.last.item()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}


@pytest.mark.parametrize("name", NETWORKS)
def test_trainable_parameter_count_equals_the_spec(name: str) -> None:
    network = NETWORKS[name]
    runner = prepare(network, "infer")
    assert runner.trainable_params() == network.params


@pytest.mark.parametrize("name", NETWORKS)
def test_infer_step_gives_the_spec_output_shape_and_changes_nothing(name: str) -> None:
    network = NETWORKS[name]
    runner = prepare(network, "infer")
    before = snapshot(net(runner))
    runner.step()
    runner.sync()
    first = runner.last
    assert isinstance(first, torch.Tensor) and first.shape == (BATCH, *network.output_shape)
    runner.step()  # dropout is off and batch norm uses its running statistics: the same output
    assert isinstance(runner.last, torch.Tensor) and torch.equal(runner.last, first)
    for key, value in snapshot(net(runner)).items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("name", NETWORKS)
def test_train_step_updates_every_trainable_parameter_with_a_finite_loss(name: str) -> None:
    network = NETWORKS[name]
    runner = prepare(network, "train")
    before = {key: p.detach().clone() for key, p in net(runner).named_parameters()}
    runner.step()
    runner.sync()
    assert math.isfinite(final_loss(runner))
    for key, param in net(runner).named_parameters():
        if param.requires_grad:
            assert not torch.equal(param, before[key]), f"{key} did not change"
        else:
            assert torch.equal(param, before[key]), f"frozen {key} changed"


@pytest.mark.parametrize("name", LSTM_NETWORKS)
def test_lstm_recurrent_bias_is_frozen_at_zero(name: str) -> None:
    recipe = Recipe(Optimizer("adam", lr=0.01, weight_decay=0.1), Init("uniform", scale=0.1))
    runner = prepare(NETWORKS[name], "train", recipe=recipe)
    for _ in range(2):
        runner.step()
    hh = {key: p for key, p in net(runner).named_parameters() if ".bias_hh_l" in key}
    assert len(hh) == 2  # two layers
    for key, param in hh.items():
        assert not param.requires_grad, key
        assert torch.count_nonzero(param) == 0, key
    ih = [p for key, p in net(runner).named_parameters() if ".bias_ih_l" in key]
    assert ih and all(p.requires_grad and torch.count_nonzero(p) > 0 for p in ih)


def test_gru_keeps_both_biases_trainable() -> None:
    runner = prepare(NETWORKS["gru-last"], "train")
    biases = [p for key, p in net(runner).named_parameters() if ".bias_" in key]
    assert len(biases) == 4 and all(p.requires_grad for p in biases)


@pytest.mark.parametrize("name", ["mlp", "resnet", "lstm-lm"])
def test_uniform_init_respects_its_scale(name: str) -> None:
    scale = 0.05
    runner = prepare(NETWORKS[name], "infer", recipe=Recipe(SGD.optimizer, Init("uniform", scale=scale)))
    for module in net(runner).modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    norms = {id(p) for m in net(runner).modules() if isinstance(m, pt._NORMS) for p in m.parameters()}
    values = torch.cat([
        p.detach().flatten() for p in net(runner).parameters() if p.requires_grad and id(p) not in norms
    ])
    assert values.abs().max() <= scale
    assert values.abs().max() > 0.9 * scale
    assert abs(values.mean().item()) < 0.1 * scale


def test_glorot_and_he_initialisation() -> None:
    network = Network(
        input_shape=(3, 12, 12), input_kind="image",
        layers=(Conv2D(64, 3), BatchNorm(), Flatten(), Dense(512), Activation("relu"), Dense(10)),
        classes=10,
    )
    for init in ("glorot_uniform", "he_normal"):
        model = net(prepare(network, "infer", recipe=Recipe(SGD.optimizer, Init(init))))
        assert isinstance(model, torch.nn.Sequential)
        conv, norm, dense = model[0], model[1], model[3]
        assert isinstance(conv, torch.nn.Conv2d) and isinstance(dense, torch.nn.Linear)
        assert isinstance(norm, torch.nn.BatchNorm2d)
        assert conv.bias is not None and torch.count_nonzero(conv.bias) == 0
        assert torch.count_nonzero(dense.bias) == 0
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
        fan_in, fan_out = dense.weight.shape[1], dense.weight.shape[0]
        if init == "glorot_uniform":
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert dense.weight.abs().max() <= bound and dense.weight.abs().max() > 0.99 * bound
            assert conv.weight.abs().max() <= math.sqrt(6 / (3 * 9 + 64 * 9))
        else:
            assert dense.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)


def test_the_seed_fixes_weights_and_batch() -> None:
    network = NETWORKS["resnet"]
    a, b, c = (prepare(network, "train", seed=seed) for seed in (7, 7, 8))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert all(torch.equal(x, y) for x, y in zip(net(a).parameters(), net(b).parameters(), strict=True))
    assert not torch.equal(a.inputs, c.inputs)
    assert not torch.equal(next(net(a).parameters()), next(net(c).parameters()))


def test_synthetic_batch_shapes_and_ranges() -> None:
    lm = prepare(NETWORKS["lstm-lm"], "train")
    assert lm.inputs.shape == (BATCH, 12) and lm.inputs.dtype == torch.int64
    assert lm.inputs.min() >= 0 and lm.inputs.max() < 50
    assert lm.labels.shape == (BATCH, 12) and lm.labels.max() < 50
    cnn = prepare(NETWORKS["cnn"], "train")
    assert cnn.inputs.shape == (BATCH, 3, 16, 16) and cnn.inputs.dtype == torch.float32
    assert cnn.labels.shape == (BATCH,) and cnn.labels.dtype == torch.int64


@pytest.mark.parametrize(
    ("name", "reduction", "expected"),
    [
        ("mlp", "mean", math.log(10)),
        ("mlp", "sum_over_batch", math.log(10)),  # one label per sample: the same as the mean
        ("lstm-lm", "mean", math.log(50)),
        ("lstm-lm", "sum_over_batch", 12 * math.log(50)),  # summed over the 12 tokens of a sample
    ],
)
def test_loss_is_cross_entropy_with_the_recipes_reduction(name: str, reduction: str, expected: float) -> None:
    # Near-zero weights give near-uniform logits, so the first loss is log(classes) per label.
    recipe = Recipe(SGD.optimizer, Init("uniform", scale=1e-4), loss_reduction=reduction)  # type: ignore[arg-type]
    runner = prepare(NETWORKS[name], "train", recipe=recipe)
    runner.step()
    assert final_loss(runner) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    ("optimizer", "kind", "settings"),
    [
        (Optimizer("sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4), torch.optim.SGD,
         {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
        (Optimizer("adam", lr=1e-3, beta1=0.8, beta2=0.99, eps=1e-7), torch.optim.Adam,
         {"lr": 1e-3, "betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.0}),
        (Optimizer("adadelta", lr=1.0, rho=0.95, eps=1e-6), torch.optim.Adadelta,
         {"lr": 1.0, "rho": 0.95, "eps": 1e-6}),
        (Optimizer("rmsprop", lr=1e-3, rho=0.9, eps=1e-7), torch.optim.RMSprop,
         {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7}),
    ],
)
def test_optimizer_follows_the_recipe(optimizer: Optimizer, kind: type, settings: dict[str, object]) -> None:
    runner = prepare(NETWORKS["lstm-last"], "train", recipe=Recipe(optimizer, Init("glorot_uniform")))
    assert isinstance(runner.model, pt.Model)
    assert type(runner.model.optimizer) is kind
    (group,) = runner.model.optimizer.param_groups
    for key, value in settings.items():
        assert group[key] == value, key
    assert sum(p.numel() for p in group["params"]) == NETWORKS["lstm-last"].params  # trainable only
    runner.step()
    assert math.isfinite(final_loss(runner))


def test_gradient_clipping_bounds_the_update() -> None:
    clip = 1e-3
    plain = Optimizer("sgd", lr=1.0)
    deltas = {}
    for clip_norm in (None, clip):
        recipe = Recipe(plain, Init("glorot_uniform"), grad_clip_norm=clip_norm)
        runner = prepare(NETWORKS["lstm-lm"], "train", recipe=recipe)
        before = [p.detach().clone() for p in net(runner).parameters()]
        runner.step()
        with torch.no_grad():
            squares = [((p - b) ** 2).sum() for p, b in zip(net(runner).parameters(), before, strict=True)]
        deltas[clip_norm] = math.sqrt(float(sum(squares)))
    assert deltas[None] > 10 * clip  # the test means something: unclipped, the update is larger
    assert deltas[clip] == pytest.approx(clip, rel=1e-3)


def test_parity_record() -> None:
    cnn = prepare(NETWORKS["cnn"], "train").parity()
    assert cnn.threads == torch.get_num_threads() == THREADS
    assert cnn.dtype == "float32" and cnn.layout == "NCHW" and cnn.execution == "eager"
    assert cnn.tf32 is None and cnn.cudnn_benchmark is None  # on the CPU
    assert cnn.details["interop_threads"] == torch.get_num_interop_threads()
    assert isinstance(cnn.details["mkldnn"], bool)
    assert cnn.details["blas"] is None or isinstance(cnn.details["blas"], str)
    assert cnn.details["threads_source"] == "torch.get_num_threads()"
    # The worker reads the GPU allocator's peak from the runner by name: the kernel's runner must
    # pass it on (None on the CPU, where the figure comes from the process's RSS instead).
    assert prepare(NETWORKS["cnn"], "train").device_memory_peak_bytes() is None
    assert prepare(NETWORKS["lstm-lm"], "infer").parity().layout is None


def test_backend_identity_through_the_registry() -> None:
    eager, compiled = load_backend("torch", threads=THREADS), load_backend("torch-compile", threads=THREADS)
    assert (eager.name, compiled.name) == ("torch", "torch-compile")
    assert eager.version() == torch.__version__
    assert torch.get_num_threads() == THREADS


@pytest.mark.parametrize(("field", "value"), [("scenario", "accuracy"), ("device", "tpu")])
def test_what_torch_cannot_run_is_unsupported(field: str, value: str) -> None:
    with pytest.raises(Unsupported, match=value):
        prepare(NETWORKS["mlp"], **{"scenario": "train", field: value})


@pytest.mark.parametrize("precision", ["float16", "mixed-fp16"])
def test_float16_runs_on_a_gpu_only(precision: str) -> None:
    with pytest.raises(Unsupported, match="run on a GPU only"):
        prepare(NETWORKS["mlp"], precision=precision)


def test_mixed_fp16_trains_with_loss_scaling() -> None:
    """mixed-fp16 steps through torch.amp.GradScaler (a GPU's recipe; built here on the CPU, which torch's
    float16 autocast and GradScaler also serve, past the GPU-only check of the kernel)."""
    torch.manual_seed(0)
    model = pt.Model(workload(NETWORKS["mlp"], SGD), "mixed-fp16", "cpu", BATCH, training=True)
    assert model.scaler is not None
    inputs = torch.randn(BATCH, *NETWORKS["mlp"].input_shape)
    labels = torch.randint(0, NETWORKS["mlp"].classes, (BATCH,))
    before = [p.detach().clone() for p in model.params]
    loss = model.train_step(inputs, labels)
    assert math.isfinite(float(loss)) and float(model.scaler.get_scale()) > 1.0  # the loss was scaled up
    assert all(p.dtype == torch.float32 for p in model.params)
    assert any(not torch.equal(p, q) for p, q in zip(model.params, before, strict=True))
    assert model.parity().details["loss_scale"] == float(model.scaler.get_scale())


def test_unsupported_precision_names_the_valid_one() -> None:
    with pytest.raises(Unsupported, match="float32"):
        prepare(NETWORKS["mlp"], precision="float64")


def test_pool_padding_over_half_the_kernel_is_unsupported() -> None:
    network = Network(
        input_shape=(2, 8, 8), input_kind="image",
        layers=(MaxPool2D(2, padding=2), Flatten(), Dense(3)), classes=3,
    )
    with pytest.raises(Unsupported, match="padding"):
        prepare(network)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="CUDA is not available"):
        prepare(NETWORKS["mlp"], device="cuda")


SMALL = sorted(name for name in CATALOGUE if name.endswith("-small"))


@pytest.mark.skipif(not SMALL, reason="the catalogue has no -small workloads yet")
@pytest.mark.parametrize("name", SMALL or ["none"])
def test_small_catalogue_workload_builds_trains_and_infers(name: str) -> None:
    wl = CATALOGUE[name]
    backend = pt.Backend(threads=THREADS)
    for scenario in ("train", "infer"):
        runner = backend.prepare(StepRequest(
            workload=wl, scenario=scenario, batch_size=2, device="cpu", threads=THREADS,
            precision="float32", seed=0,
        ))
        assert runner.trainable_params() == wl.params
        runner.step()
        runner.sync()
        assert isinstance(runner.last, torch.Tensor)
        if scenario == "train":
            assert math.isfinite(runner.last.item())
        else:
            assert runner.last.shape == (2, *wl.network.output_shape)


@pytest.mark.slow  # Inductor compiles C++ on the CPU: ~20 s cold, ~5 s cached; one tiny network only
# Inductor imports torch.utils.mkldnn, which uses the deprecated torch.jit.script_method.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_matches_eager_on_a_tiny_mlp() -> None:
    network = Network(
        input_shape=(8,), input_kind="vector",
        layers=(Dense(16), Activation("relu"), Dense(4)), classes=4,
    )
    eager, compiled = pt.Backend(threads=THREADS), pt.Backend(threads=THREADS, compile=True)
    runs: dict[str, tuple[KernelRunner, KernelRunner]] = {}
    for backend in (eager, compiled):
        trainer, inferrer = (backend.prepare(request(network, scenario)) for scenario in ("train", "infer"))
        for _ in range(2):
            trainer.step()
            inferrer.step()
        runs[backend.name] = (trainer, inferrer)
    (eager_train, eager_infer), (comp_train, comp_infer) = runs["torch"], runs["torch-compile"]
    assert comp_train.parity().execution == "inductor" and comp_infer.parity().execution == "inductor"
    assert final_loss(comp_train) == pytest.approx(final_loss(eager_train), rel=1e-5)
    for p, q in zip(net(comp_train).parameters(), net(eager_train).parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert isinstance(comp_infer.last, torch.Tensor) and isinstance(eager_infer.last, torch.Tensor)
    torch.testing.assert_close(comp_infer.last, eager_infer.last)
