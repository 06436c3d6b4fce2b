"""The workload catalogue against the reference's published figures. No framework is imported."""

from __future__ import annotations

import dataclasses

import pytest

from dlarena.errors import UnknownNameError
from dlarena.spec import (
    GRU,
    LSTM,
    Activation,
    Concat,
    Conv2D,
    Dense,
    Layer,
    MaxPool2D,
    Residual,
    Workload,
    transformers,
)
from dlarena.spec.catalogue import CATALOGUE, SMALL_BATCH_SIZE, STUDIES, _index, get_workload
from dlarena.spec.layers import TiedOutput, sequence_params, sequence_shapes

# Copied by hand from reference/workloads.md, "Parameter-count summary (computed)", so that a change
# to the catalogue cannot move both the network and its expected figure at once.
REFERENCE_PARAMS: dict[str, int] = {
    "fcn5": 117_997_696,
    "fcn8": 130_586_752,
    "alexnet": 62_378_344,
    "resnet50": 25_557_032,
    "lstm32": 6_180_624,
    "lstm64": 6_180_624,
    "karmanov-cnn": 3_441_592,
    "karmanov-gru": 3_818_302,
    "mnist-cnn": 1_199_882,
    "cifar10-cnn": 1_250_858,
    "alexnet-owt": 61_100_840,
    "overfeat": 145_920_872,
    "vgg-a": 132_863_336,
    "googlenet": 6_998_552,
    # Devlin et al. 2019 and Hugging Face's BertModel (encoder and pooler; the classifier is the task's).
    "bert-base": 109_482_240,
    # Radford et al. 2019, the "117M" model as OpenAI's released checkpoint counts it (tied output).
    "gpt2-124m": 124_439_808,
}
# Networks whose small twin is shallower as well as narrower: the published builder at the twin's depth.
SHALLOWER_TWINS = {
    "bert-base": lambda: transformers.bert(dataclasses.replace(transformers.BERT_BASE, layers=2),
                                           transformers.BERT_CLASSES),
    "gpt2-124m": lambda: transformers.gpt2(dataclasses.replace(transformers.GPT2_SMALL, layers=2)),
}

# dlarena's own workloads (the digits) were published by no study, so they have no reference figure.
PUBLISHED = [w for w in CATALOGUE.values() if not w.is_small and w.study != "dlarena"]
SMALL = [w for w in CATALOGUE.values() if w.is_small]


def _ids(workloads: list[Workload]) -> list[str]:
    return [w.name for w in workloads]


def _structure(layers: tuple[Layer, ...]) -> list[object]:
    """The layer types of a network, nested like its blocks, with every size left out."""
    out: list[object] = []
    for layer in layers:
        if isinstance(layer, Residual):
            out.append(("Residual", _structure(layer.body), _structure(layer.shortcut)))
        elif isinstance(layer, Concat):
            out.append(("Concat", [_structure(branch) for branch in layer.branches]))
        elif isinstance(layer, Activation):
            out.append(layer.function)
        else:
            out.append(type(layer).__name__)
    return out


# --- published figures -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), sorted(REFERENCE_PARAMS.items()))
def test_parameter_count_matches_the_reference(name: str, params: int) -> None:
    workload = get_workload(name)
    assert workload.params - workload.head_params == params
    assert workload.published_params == params


def test_every_published_workload_is_in_the_reference_table() -> None:
    assert sorted(_ids(PUBLISHED)) == sorted(REFERENCE_PARAMS)


@pytest.mark.parametrize("workload", PUBLISHED, ids=_ids(PUBLISHED))
def test_published_workload_is_complete(workload: Workload) -> None:
    assert workload.params - workload.head_params == workload.published_params
    assert workload.study in STUDIES
    assert workload.citation and workload.title and workload.notes
    assert workload.quirks_not_copied, "every study's code has quirks worth naming"
    assert workload.variant_of is None
    # Logits, not probabilities: the loss is softmax cross-entropy on the last Dense (or on GPT-2's
    # output through its token embedding).
    last = workload.network.layers[-1]
    assert ((isinstance(last, Dense) and last.units == workload.network.classes)
            or (isinstance(last, TiedOutput) and last.vocab == workload.network.classes))


# --- shapes and sub-figures ------------------------------------------------------------------------


def _pool_outputs(name: str) -> list[tuple[int, ...]]:
    network = get_workload(name).network
    shapes = sequence_shapes(network.layers, network.input_shape)
    pairs = zip(network.layers, shapes, strict=True)
    return [shape for layer, shape in pairs if isinstance(layer, MaxPool2D)]


def test_alexnet_feature_maps() -> None:
    network = get_workload("alexnet").network
    shapes = sequence_shapes(network.layers, network.input_shape)
    assert shapes[0] == (96, 55, 55)  # conv1 with padding 2, as Torch
    assert _pool_outputs("alexnet") == [(96, 27, 27), (256, 13, 13), (256, 6, 6)]
    assert shapes[-1] == (1000,)


def test_alexnet_owt_feature_maps() -> None:
    network = get_workload("alexnet-owt").network
    assert sequence_shapes(network.layers, network.input_shape)[0] == (64, 55, 55)
    assert _pool_outputs("alexnet-owt") == [(64, 27, 27), (192, 13, 13), (256, 6, 6)]


def test_overfeat_feature_maps() -> None:
    network = get_workload("overfeat").network
    assert network.input_shape == (3, 231, 231)
    assert sequence_shapes(network.layers, network.input_shape)[0] == (96, 56, 56)
    assert _pool_outputs("overfeat") == [(96, 28, 28), (256, 12, 12), (1024, 6, 6)]


def test_vgg_a_ends_in_a_7x7_map() -> None:
    assert _pool_outputs("vgg-a")[-1] == (512, 7, 7)


def test_googlenet_reaches_7x7_before_its_global_pool() -> None:
    network = get_workload("googlenet").network
    shapes = sequence_shapes(network.layers, network.input_shape)
    assert shapes[-3] == (1024, 7, 7)
    assert shapes[-2] == (1024,)


def test_fcn8_has_six_hidden_layers() -> None:
    for name, hidden in (("fcn5", 3), ("fcn8", 6)):
        layers = get_workload(name).network.layers
        assert layers.count(Activation("sigmoid")) == hidden
        assert sum(isinstance(layer, Dense) for layer in layers) == hidden + 1


def test_resnet50_trunk_and_structure() -> None:
    network = get_workload("resnet50").network
    trunk = network.layers[:-1]
    assert sequence_params(trunk, network.input_shape) == 23_508_032  # Karmanov's feature extractor
    assert sequence_shapes(trunk, network.input_shape)[-1] == (2048,)
    blocks = [layer for layer in network.layers if isinstance(layer, Residual)]
    assert len(blocks) == 16
    projected = [block for block in blocks if block.shortcut]
    assert len(projected) == 4  # one per stage
    first = [block.body[0] for block in projected]
    # The stride-2 sits on the first 1x1 conv of a block (He et al., Caffe, TF), not on the 3x3.
    assert [(c.kernel, c.stride) for c in first if isinstance(c, Conv2D)] == [(1, 1), (1, 2), (1, 2), (1, 2)]
    convs = [layer for block in blocks for layer in (*block.body, *block.shortcut)
             if isinstance(layer, Conv2D)]
    assert not any(conv.bias for conv in convs)


def test_lstm_layers_alone() -> None:
    for name in ("lstm32", "lstm64"):
        network = get_workload(name).network
        lstm = network.layers[1]
        assert isinstance(lstm, LSTM)
        steps = network.input_shape[0]
        assert lstm.params((steps, 256)) == 1_050_624
        assert network.output_shape == (steps, 10_000)  # logits at every step
        assert network.label_kind == "token"
    assert get_workload("lstm64").network.input_shape == (64,)


def test_gru_count() -> None:
    network = get_workload("karmanov-gru").network
    gru = network.layers[1]
    assert isinstance(gru, GRU) and not gru.return_sequences
    assert gru.params((150, 125)) == 68_100  # two biases per gate, as cuDNN and Keras' CuDNNGRU
    assert network.params == 3_818_302
    assert network.output_shape == (2,)


def test_karmanov_cnn_pools_before_its_relu() -> None:
    layers = get_workload("karmanov-cnn").network.layers
    after_pool = [layers[i + 1] for i, layer in enumerate(layers) if isinstance(layer, MaxPool2D)]
    assert after_pool == [Activation("relu"), Activation("relu")]


def test_mnist_is_channels_first() -> None:
    assert get_workload("mnist-cnn").network.input_shape == (1, 28, 28)


# --- recipes ---------------------------------------------------------------------------------------

RECIPES = [
    # name, optimizer, lr, momentum, init, default batch
    ("fcn5", "sgd", 0.01, 0.0, "uniform", 64),
    ("alexnet", "sgd", 0.01, 0.0, "framework_default", 16),
    ("resnet50", "sgd", 0.01, 0.9, "he_normal", 16),
    ("lstm32", "sgd", 1.0, 0.0, "uniform", 128),
    ("karmanov-cnn", "sgd", 0.01, 0.9, "glorot_uniform", 64),
    ("karmanov-gru", "adam", 1e-3, 0.0, "glorot_uniform", 64),
    ("mnist-cnn", "adadelta", 1.0, 0.0, "glorot_uniform", 128),
    ("cifar10-cnn", "rmsprop", 1e-4, 0.0, "glorot_uniform", 32),
    ("alexnet-owt", "sgd", 0.01, 0.0, "framework_default", 128),
    ("vgg-a", "sgd", 0.01, 0.0, "framework_default", 64),
]


@pytest.mark.parametrize(("name", "optimizer", "lr", "momentum", "init", "batch"), RECIPES)
def test_recipe(name: str, optimizer: str, lr: float, momentum: float, init: str, batch: int) -> None:
    workload = get_workload(name)
    assert workload.recipe.optimizer.name == optimizer
    assert workload.recipe.optimizer.lr == pytest.approx(lr)
    assert workload.recipe.optimizer.momentum == momentum
    assert workload.recipe.init.name == init
    assert workload.default_batch_size == batch


def test_special_recipes() -> None:
    lstm = get_workload("lstm64").recipe
    assert (lstm.loss_reduction, lstm.grad_clip_norm, lstm.init.scale) == ("sum_over_batch", 5.0, 0.1)
    assert get_workload("fcn8").recipe.init.scale == 0.5
    assert get_workload("mnist-cnn").recipe.optimizer.rho == 0.95


# --- small variants --------------------------------------------------------------------------------


@pytest.mark.parametrize("published", PUBLISHED, ids=_ids(PUBLISHED))
def test_every_published_workload_has_a_smaller_twin(published: Workload) -> None:
    small = get_workload(f"{published.name}-small")
    assert small.variant_of == published.name
    assert small.published_params is None
    assert small.study == published.study and small.recipe == published.recipe
    assert "small" in small.title
    assert small.default_batch_size == SMALL_BATCH_SIZE
    # Same builder: the same layer types in the same nesting, only sizes differ.
    same_depth = SHALLOWER_TWINS[published.name]() if published.name in SHALLOWER_TWINS else published.network
    assert _structure(small.network.layers) == _structure(same_depth.layers)
    assert small.params < published.params
    for scenario in ("infer", "train"):
        assert small.flops(scenario, SMALL_BATCH_SIZE) < published.flops(scenario, SMALL_BATCH_SIZE)


def test_small_variants_are_twins_of_published_workloads() -> None:
    published = set(_ids(PUBLISHED))
    assert {w.variant_of for w in SMALL} == published
    assert len(SMALL) == len(PUBLISHED)


def test_names_are_unique_and_match_their_keys() -> None:
    assert all(name == workload.name for name, workload in CATALOGUE.items())
    with pytest.raises(ValueError, match="defined twice"):
        _index([get_workload("fcn5"), get_workload("fcn5")])
    with pytest.raises(ValueError, match="unknown study"):
        _index([dataclasses.replace(get_workload("fcn5"), study="nobody")])


# --- FLOPs -----------------------------------------------------------------------------------------


def test_resnet50_forward_flops() -> None:
    # ResNet-50 is 3.8-4.1 GMACs per 224x224 image (He et al.; torchvision), two FLOPs per MAC, plus
    # batch norm, ReLU and the additions.
    assert 7.0e9 <= get_workload("resnet50").flops("infer", 1) <= 8.5e9


def test_alexnet_owt_forward_flops() -> None:
    # The "one weird trick" AlexNet is 0.71-0.72 GMACs per image (torchvision's alexnet).
    assert 1.4e9 <= get_workload("alexnet-owt").flops("infer", 1) <= 1.6e9


@pytest.mark.parametrize("workload", list(CATALOGUE.values()), ids=list(CATALOGUE))
def test_training_costs_more_than_inference(workload: Workload) -> None:
    # Backward of a linear map is two forward passes, so a train step is about 3x a forward pass.
    forward = workload.flops("infer", 4)
    assert forward > 0
    assert workload.flops("train", 4) > 2.5 * forward
    assert workload.flops("infer", 8) == 2 * forward


# --- look-up ---------------------------------------------------------------------------------------


def test_get_workload_returns_the_entry() -> None:
    assert get_workload("resnet50") is CATALOGUE["resnet50"]


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as raised:
        get_workload("resnet51")
    message = str(raised.value)
    assert "resnet51" in message
    assert all(name in message for name in CATALOGUE)
    assert raised.value.exit_code == 2


def test_dlarena_workloads_train_on_data_that_installs_with_it() -> None:
    own = [w for w in CATALOGUE.values() if w.study == "dlarena"]
    assert {w.name for w in own} == {"digits-mlp", "digits-cnn"}
    for workload in own:
        assert workload.training is not None and workload.training.dataset == "digits"
        assert workload.network.input_shape == (1, 8, 8) and workload.network.classes == 10
        assert workload.published_params is None and not workload.quirks_not_copied


def test_every_study_network_with_a_training_recipe_names_its_source() -> None:
    trained = {w.name: w.training for w in CATALOGUE.values() if w.training is not None and w.study != "dlarena"}
    assert set(trained) == {"karmanov-cnn", "karmanov-gru", "mnist-cnn", "cifar10-cnn"}
    assert {name: (t.dataset, t.epochs, t.batch_size, t.target_accuracy) for name, t in trained.items()} == {
        "karmanov-cnn": ("cifar10", 10, 64, None),  # reference 2.1: EPOCHS=10, BATCHSIZE=64
        "karmanov-gru": ("imdb", 3, 64, None),  # reference 2.1: EPOCHS=3, BATCHSIZE=64
        "mnist-cnn": ("mnist", 12, 128, 0.99),  # reference 3: batch 128, 12 epochs
        "cifar10-cnn": ("cifar10", 50, 32, 0.75),  # reference 3: batch 32
    }
    assert all(t.source for t in trained.values())
    assert all(w.training is None for w in CATALOGUE.values() if w.is_small)
