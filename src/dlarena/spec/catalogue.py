"""The workload catalogue: the networks of the published comparisons, and a small twin of each.

Every fact here comes from ``reference/workloads.md`` (the studies' own code, read at a stated
commit), which cites the repository path of each detail. Each network is written by one builder
function whose arguments are its sizes, so a published network and its small twin come from the
same code and differ only in those sizes: what a framework gets right on the small one, it gets
right on the big one.

Conventions shared by every entry:

* The layers end in a ``Dense`` that produces logits; there is no softmax layer, because the loss
  of every recipe is softmax cross-entropy on the logits (what every study computed, whether as
  ``SoftmaxWithLoss``, ``LogSoftMax`` + NLL or a softmax ``Dense`` + categorical cross-entropy).
* Images are channels-first ``(C, H, W)``, the spec's layout; frameworks that prefer channels-last
  transpose inputs and kernels themselves.
* What a study's code did that dlarena deliberately does not reproduce is listed, per workload, in
  ``quirks_not_copied``; ``notes`` says why the remaining choices were made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

from dlarena.errors import UnknownNameError
from dlarena.spec import transformers
from dlarena.spec.layers import (
    GRU,
    LSTM,
    Activation,
    BatchNorm,
    Concat,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    MaxPool2D,
    Residual,
)
from dlarena.spec.network import Network
from dlarena.spec.recipe import Init, Optimizer, Recipe
from dlarena.spec.workload import Training, Workload

# Batch size of every small variant: small enough that one CPU training step stays in the tens of
# milliseconds, large enough that batch norm statistics and per-sample work are still exercised.
SMALL_BATCH_SIZE = 8

# The studies, in the order the catalogue (and the report) lists them.
# "dlarena" holds dlarena's own workloads (the digits), which no study published.
# "devlin2019" (BERT) and "radford2019" (GPT-2) are the papers of the transformers (transformers.py).
STUDIES: tuple[str, ...] = ("shi2016", "karmanov2017", "shatnawi2017", "chintala2015", "devlin2019", "radford2019",
                            "dlarena")

_SHI = "Shi, Wang, Xu, Chu 2016, arXiv 1608.07249 (DLBench); hclhkbu/dlbench@978b034"
_KARMANOV = "Karmanov et al., ilkarman/DeepLearningFrameworks@671e2a0"
_SHATNAWI = (
    "Shatnawi, Al-Bdour, Al-Qurran, Al-Ayyoub 2018, ICICS, DOI 10.1109/IACS.2018.8355444; "
    "architecture inferred from keras-team/keras"
)
_CHINTALA = "Chintala, soumith/convnet-benchmarks@b458aab"


def _relu() -> Activation:
    return Activation("relu")


def _narrow(channels: int, width_div: int) -> int:
    """``channels`` divided by ``width_div``, never below one channel."""
    return max(1, channels // width_div)


def _image_network(channels: int, input_size: int, layers: tuple[Layer, ...], classes: int) -> Network:
    """A classifier of square channels-first images."""
    return Network(
        input_shape=(channels, input_size, input_size), input_kind="image", layers=layers, classes=classes
    )


# --------------------------------------------------------------------------------------------------
# Builders. Each takes the sizes that a small variant shrinks and nothing else.


def _fcn(inputs: int, hidden: int, depth: int, classes: int) -> Network:
    """DLBench FCN: ``depth`` sigmoid layers of ``hidden`` units between input and logits."""
    layers: list[Layer] = []
    for _ in range(depth):
        layers += [Dense(hidden), Activation("sigmoid")]
    layers.append(Dense(classes))
    return Network(input_shape=(inputs,), input_kind="vector", layers=tuple(layers), classes=classes)


def _alexnet(input_size: int, channels: tuple[int, int, int, int, int], width_div: int, fc: int,
             classes: int) -> Network:
    """AlexNet without LRN, grouping or dropout; every conv and hidden FC followed by ReLU.

    DLBench's plan (96-256-384-384-256) and the "one weird trick" plan (64-192-384-256-256) share
    every window, stride and padding, so one builder serves both.
    """
    c1, c2, c3, c4, c5 = (_narrow(c, width_div) for c in channels)
    layers: tuple[Layer, ...] = (
        Conv2D(c1, 11, stride=4, padding=2), _relu(), MaxPool2D(3, 2),
        Conv2D(c2, 5, padding=2), _relu(), MaxPool2D(3, 2),
        Conv2D(c3, 3, padding=1), _relu(),
        Conv2D(c4, 3, padding=1), _relu(),
        Conv2D(c5, 3, padding=1), _relu(), MaxPool2D(3, 2),
        Flatten(),
        Dense(fc), _relu(),
        Dense(fc), _relu(),
        Dense(classes),
    )
    return _image_network(3, input_size, layers, classes)


# ResNet-50: blocks per stage, and the bottleneck width of the first stage (doubling per stage).
RESNET50_BLOCKS: tuple[int, ...] = (3, 4, 6, 3)
RESNET50_BASE_WIDTH = 64
RESNET_EXPANSION = 4


def _bottleneck(width: int, stride: int, project: bool) -> Residual:
    """ResNet v1 bottleneck; the stride sits on the first 1x1 conv, as in He et al.'s Caffe model."""
    out = width * RESNET_EXPANSION
    body: tuple[Layer, ...] = (
        Conv2D(width, 1, stride=stride, bias=False), BatchNorm(), _relu(),
        Conv2D(width, 3, padding=1, bias=False), BatchNorm(), _relu(),
        Conv2D(out, 1, bias=False), BatchNorm(),
    )
    shortcut: tuple[Layer, ...] = (Conv2D(out, 1, stride=stride, bias=False), BatchNorm()) if project else ()
    return Residual(body=body, shortcut=shortcut)


def _resnet_trunk(width_div: int) -> tuple[Layer, ...]:
    """ResNet-50 up to and including the global average pool (Karmanov's feature extractor)."""
    layers: list[Layer] = [
        Conv2D(_narrow(RESNET50_BASE_WIDTH, width_div), 7, stride=2, padding=3, bias=False),
        BatchNorm(), _relu(),
        MaxPool2D(3, 2, padding=1),
    ]
    for stage, blocks in enumerate(RESNET50_BLOCKS):
        width = _narrow(RESNET50_BASE_WIDTH * 2**stage, width_div)
        for block in range(blocks):
            # The first stage follows the max pool and keeps its resolution; the others halve it.
            stride = 2 if block == 0 and stage > 0 else 1
            # Only the first block of a stage changes the channel count, so only it needs a projection.
            layers += [_bottleneck(width, stride, project=block == 0), _relu()]
    layers.append(GlobalAvgPool2D())
    return tuple(layers)


def _resnet50(input_size: int, width_div: int, classes: int) -> Network:
    layers = (*_resnet_trunk(width_div), Dense(classes))
    return _image_network(3, input_size, layers, classes)


def _lstm_lm(steps: int, vocab: int, dim: int, layers: int) -> Network:
    """DLBench word language model: embedding, stacked LSTM, logits over the vocabulary at every step."""
    return Network(
        input_shape=(steps,), input_kind="tokens", vocab=vocab, classes=vocab, label_kind="token",
        # DLBench uses embedding size = hidden size (256 both).
        layers=(Embedding(vocab, dim), LSTM(dim, layers=layers, return_sequences=True), Dense(vocab)),
    )


def _karmanov_cnn(input_size: int, width_div: int, fc: int, classes: int) -> Network:
    """Karmanov's VGG-style CIFAR-10 CNN; the second conv of each pair is pooled before its ReLU."""
    c1, c2 = _narrow(50, width_div), _narrow(100, width_div)
    layers: tuple[Layer, ...] = (
        Conv2D(c1, 3, padding=1), _relu(),
        Conv2D(c1, 3, padding=1), MaxPool2D(2), _relu(), Dropout(0.25),
        Conv2D(c2, 3, padding=1), _relu(),
        Conv2D(c2, 3, padding=1), MaxPool2D(2), _relu(), Dropout(0.25),
        Flatten(),
        Dense(fc), _relu(), Dropout(0.5),
        Dense(classes),
    )
    return _image_network(3, input_size, layers, classes)


def _karmanov_gru(steps: int, vocab: int, embed: int, hidden: int, classes: int) -> Network:
    """Karmanov's IMDB classifier: embedding, one GRU, a Dense on the last step's output."""
    return Network(
        input_shape=(steps,), input_kind="tokens", vocab=vocab, classes=classes,
        layers=(Embedding(vocab, embed), GRU(hidden, return_sequences=False), Dense(classes)),
    )


def _mnist_cnn(input_size: int, width_div: int, fc: int, classes: int) -> Network:
    """Keras 2 ``examples/mnist_cnn.py``: two valid 3x3 convs, a 2x2 max pool, one hidden Dense."""
    layers: tuple[Layer, ...] = (
        Conv2D(_narrow(32, width_div), 3), _relu(),
        Conv2D(_narrow(64, width_div), 3), _relu(),
        MaxPool2D(2), Dropout(0.25),
        Flatten(),
        Dense(fc), _relu(), Dropout(0.5),
        Dense(classes),
    )
    return _image_network(1, input_size, layers, classes)


def _cifar10_cnn(input_size: int, width_div: int, fc: int, classes: int) -> Network:
    """Keras ``examples/cifar10_cnn.py`` of 2017: two (same conv, valid conv, max pool) blocks."""
    c1, c2 = _narrow(32, width_div), _narrow(64, width_div)
    layers: tuple[Layer, ...] = (
        Conv2D(c1, 3, padding=1), _relu(),
        Conv2D(c1, 3), _relu(),
        MaxPool2D(2), Dropout(0.25),
        Conv2D(c2, 3, padding=1), _relu(),
        Conv2D(c2, 3), _relu(),
        MaxPool2D(2), Dropout(0.25),
        Flatten(),
        Dense(fc), _relu(), Dropout(0.5),
        Dense(classes),
    )
    return _image_network(3, input_size, layers, classes)


def _overfeat(input_size: int, width_div: int, fc_div: int, classes: int) -> Network:
    """OverFeat-fast as in convnet-benchmarks: 2x2 max pools, valid conv2, three padded 3x3 convs."""
    c1, c2, c3, c4 = (_narrow(c, width_div) for c in (96, 256, 512, 1024))
    fc1, fc2 = _narrow(3072, fc_div), _narrow(4096, fc_div)
    layers: tuple[Layer, ...] = (
        Conv2D(c1, 11, stride=4), _relu(), MaxPool2D(2),
        Conv2D(c2, 5), _relu(), MaxPool2D(2),
        Conv2D(c3, 3, padding=1), _relu(),
        Conv2D(c4, 3, padding=1), _relu(),
        Conv2D(c4, 3, padding=1), _relu(), MaxPool2D(2),
        Flatten(),
        Dense(fc1), _relu(),
        Dense(fc2), _relu(),
        Dense(classes),
    )
    return _image_network(3, input_size, layers, classes)


# VGG-A (VGG-11): 3x3 padded conv widths, "M" for a 2x2 max pool.
VGG_A_PLAN: tuple[int | Literal["M"], ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _vgg_a(input_size: int, width_div: int, fc: int, classes: int) -> Network:
    layers: list[Layer] = []
    for item in VGG_A_PLAN:
        if item == "M":
            layers.append(MaxPool2D(2))
        else:
            layers += [Conv2D(_narrow(item, width_div), 3, padding=1), _relu()]
    layers += [Flatten(), Dense(fc), _relu(), Dense(fc), _relu(), Dense(classes)]
    return _image_network(3, input_size, tuple(layers), classes)


# GoogLeNet v1 inception blocks: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection);
# "M" is the 3x3 stride-2 max pool between the groups 3, 4 and 5.
Inception = tuple[int, int, int, int, int, int]
GOOGLENET_PLAN: tuple[Inception | Literal["M"], ...] = (
    (64, 96, 128, 16, 32, 32),      # 3a
    (128, 128, 192, 32, 96, 64),    # 3b
    "M",
    (192, 96, 208, 16, 48, 64),     # 4a
    (160, 112, 224, 24, 64, 64),    # 4b
    (128, 128, 256, 24, 64, 64),    # 4c
    (112, 144, 288, 32, 64, 64),    # 4d
    (256, 160, 320, 32, 128, 128),  # 4e
    "M",
    (256, 160, 320, 32, 128, 128),  # 5a
    (384, 192, 384, 48, 128, 128),  # 5b
)


def _inception(sizes: Inception, width_div: int) -> Concat:
    n1, n3r, n3, n5r, n5, pool = (_narrow(n, width_div) for n in sizes)
    return Concat(branches=(
        (Conv2D(n1, 1), _relu()),
        (Conv2D(n3r, 1), _relu(), Conv2D(n3, 3, padding=1), _relu()),
        (Conv2D(n5r, 1), _relu(), Conv2D(n5, 5, padding=2), _relu()),
        (MaxPool2D(3, 1, padding=1), Conv2D(pool, 1), _relu()),
    ))


def _googlenet(input_size: int, width_div: int, classes: int) -> Network:
    """GoogLeNet v1 without LRN, auxiliary heads or dropout, as in convnet-benchmarks."""
    layers: list[Layer] = [
        Conv2D(_narrow(64, width_div), 7, stride=2, padding=3), _relu(),
        MaxPool2D(3, 2, padding=1),
        Conv2D(_narrow(64, width_div), 1), _relu(),
        Conv2D(_narrow(192, width_div), 3, padding=1), _relu(),
        MaxPool2D(3, 2, padding=1),
    ]
    for item in GOOGLENET_PLAN:
        layers.append(MaxPool2D(3, 2, padding=1) if item == "M" else _inception(item, width_div))
    # The original 7x7 average pool over a 7x7 map is a global average; written so, it also fits
    # the smaller maps of a small variant.
    layers += [GlobalAvgPool2D(), Dense(classes)]
    return _image_network(3, input_size, tuple(layers), classes)


# --------------------------------------------------------------------------------------------------
# Recipes.

# Plain SGD at 0.01 without momentum: DLBench's FCN and AlexNet recipe in every tool (TF
# GradientDescentOptimizer(0.01), Caffe base_lr 0.01 fixed, CNTK/Torch 0.01, momentum 0).
_SGD_001 = Optimizer("sgd", lr=0.01)

_FCN_RECIPE = Recipe(_SGD_001, Init("uniform", 0.5))  # TF ffn26752.py: uniform(-0.5, 0.5) for W and b
_ALEXNET_RECIPE = Recipe(_SGD_001, Init("framework_default"))
# DLBench's TF resnet_train.py: Momentum 0.9, lr 0.01; He et al.'s initialisation.
_RESNET_RECIPE = Recipe(Optimizer("sgd", lr=0.01, momentum=0.9), Init("he_normal"))
# TF PTB SmallConfig as DLBench ran it: lr 1.0, max_grad_norm 5, init_scale 0.1, cost = sum / batch.
_LSTM_RECIPE = Recipe(
    Optimizer("sgd", lr=1.0), Init("uniform", 0.1), loss_reduction="sum_over_batch", grad_clip_norm=5.0
)
# notebooks/common/params.py: LR 0.01, MOMENTUM 0.9; README "lessons learned" #7: glorot uniform.
_KARMANOV_CNN_RECIPE = Recipe(Optimizer("sgd", lr=0.01, momentum=0.9), Init("glorot_uniform"))
_KARMANOV_GRU_RECIPE = Recipe(
    Optimizer("adam", lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8), Init("glorot_uniform")
)
# Keras 2.0.x defaults (keras/optimizers.py @befbdaa076); glorot_uniform is Keras' default init.
_MNIST_RECIPE = Recipe(Optimizer("adadelta", lr=1.0, rho=0.95, eps=1e-8), Init("glorot_uniform"))
_CIFAR10_RECIPE = Recipe(Optimizer("rmsprop", lr=1e-4, rho=0.9, eps=1e-8), Init("glorot_uniform"))
# convnet-benchmarks timed forward + backward with no update; a plain SGD step is the cheapest
# update that makes it a complete training step. Torch, the headline column, used its own init.
_CHINTALA_RECIPE = Recipe(_SGD_001, Init("framework_default"))

_CHINTALA_QUIRKS: tuple[str, ...] = (
    "Torch's nn.Threshold(0, 1e-6) in place of ReLU in the FC layers",
    "the ReLU on the final 1000-way affine (TF relu_layer; Torch GoogLeNet's last Linear)",
    "timing without a loss or an update: Torch fed the output back as its own gradOutput, TF ran "
    "tf.gradients only",
    "Torch disabled the first layer's gradInput; TF summed 99 timed steps but divided by 100",
    "TF weights truncated-normal std 0.1, Caffe xavier",
)
_CHINTALA_NOTES = (
    "The study timed forward + backward only; dlarena's train scenario adds a plain SGD update (lr 0.01) "
    "so that every framework does a complete, comparable step, and its infer scenario is the forward "
    "column. Every conv has a bias and a ReLU; ReLU sits between the FC layers but not after the last."
)


# --------------------------------------------------------------------------------------------------
# The entries.


def _small(published: Workload, network: Network, what: str) -> Workload:
    """The small twin of ``published``: same builder and recipe, smaller sizes, no published figure."""
    return dataclasses.replace(
        published,
        name=f"{published.name}-small",
        title=f"{published.title.split(' (')[0]} (small: {what})",
        network=network,
        default_batch_size=SMALL_BATCH_SIZE,
        published_params=None,
        variant_of=published.name,
        training=None,  # its input sizes are not those of the study's data set
        notes=(
            f"Scaled-down twin of {published.name} from the same builder ({what}), for quick suites and "
            f"tests: one CPU training step at batch {SMALL_BATCH_SIZE} takes milliseconds. Not a published "
            "network; figures measured on it are not comparable with the study's."
        ),
    )


def _shi2016() -> list[Workload]:
    fcn_quirks = (
        "TF's loss -reduce_mean(labels*log(softmax)) averages over batch x 26752 elements, scaling the "
        "loss by 1/26752",
        "Torch's labels random(1, bsize): only the first bsize classes are ever used",
        "Torch's ffn26752l6bm.lua with 5 hidden layers (126,390,400 params); TF, Caffe, CNTK and MXNet use 6",
        "MXNet train_fake_data.py's default lr 0.05",
        "Caffe's default constant-0 filler (no filler given)",
        "TF feeding the batch through feed_dict inside the timed sess.run",
    )
    fcn_notes = (
        "Sigmoid hidden layers of 2048, 26752 inputs and classes, softmax cross-entropy on random labels; "
        "'{n}' counts input + {h} hidden + output layers. Init uniform(-0.5, 0.5) as TF (CNTK uniformInit "
        "agrees). Default batch 64 as DLBench's CPU runs (its sweeps use 32-1024)."
    )
    fcn5 = Workload(
        name="fcn5", title="FCN-5 (DLBench: 26752-2048x3-26752, sigmoid)", study="shi2016",
        citation=f"{_SHI}: synthetic/experiments/tensorflow/fc/ffn26752.py, caffe/fc/ffn26752.prototxt",
        network=_fcn(26752, 2048, 3, 26752), recipe=_FCN_RECIPE, default_batch_size=64,
        published_params=117_997_696, notes=fcn_notes.format(n=5, h=3), quirks_not_copied=fcn_quirks,
    )
    fcn8 = Workload(
        name="fcn8", title="FCN-8 (DLBench: 26752-2048x6-26752, sigmoid)", study="shi2016",
        citation=f"{_SHI}: synthetic/experiments/tensorflow/fc/ffn26752l6.py, caffe/fc/ffn26752l6.prototxt",
        network=_fcn(26752, 2048, 6, 26752), recipe=_FCN_RECIPE, default_batch_size=64,
        published_params=130_586_752, notes=fcn_notes.format(n=8, h=6), quirks_not_copied=fcn_quirks,
    )
    alexnet = Workload(
        name="alexnet", title="AlexNet (DLBench: 96-256-384-384-256, 224x224)", study="shi2016",
        citation=(
            f"{_SHI}: synthetic/experiments/torch/cnn/alexnet/alexnet.lua, "
            "cntk/cnn/alexnet/AlexNet.ndl, caffe/cnn/alexnet/alexnet.prototxt"
        ),
        network=_alexnet(224, (96, 256, 384, 384, 256), 1, 4096, 1000), recipe=_ALEXNET_RECIPE,
        default_batch_size=16, published_params=62_378_344,
        notes=(
            "Krizhevsky's channel plan without grouping, LRN or dropout, conv1 padding 2 as Torch (55x55 "
            "maps; CNTK and Torch agree exactly). SGD lr 0.01 without momentum in every tool. Framework "
            "default init: Torch and CNTK used their defaults. Default batch 16, DLBench's CPU setting "
            "(its GPU sweep is 16-128)."
        ),
        quirks_not_copied=(
            "Caffe's Dropout 0.5 after fc6 and fc7, and its conv1 without padding (54x54 maps)",
            "CNTK's 'same' zero padding on conv1 (56x56 maps)",
            "TF alexnetbm.py's SAME padding everywhere (FC1 12544->4096, 76,009,832 params), "
            "truncated-normal std 0.1 init and ReLU on the last affine",
            "MXNet's buggy symbol (conv5 and pool5 read relu3, fc8 reads pool5, conv pads 1)",
            "Torch's nn.Threshold(0, 1e-6) for the FC ReLUs",
            "TF's burn-in quirk: step 0 skipped in the sum but counted in the divisor",
        ),
    )
    resnet50 = Workload(
        name="resnet50", title="ResNet-50 (v1, 224x224)", study="shi2016",
        citation=(
            f"{_SHI}: synthetic/experiments/caffe/cnn/resnet/resnet-b64.prototxt, "
            "tensorflow/cnn/resnet/resnet.py; He et al. 2016 (arXiv 1512.03385)"
        ),
        network=_resnet50(224, 1, 1000), recipe=_RESNET_RECIPE, default_batch_size=16,
        published_params=25_557_032,
        notes=(
            "ResNet-50 v1: stride 2 on the first 1x1 conv of a block (He et al., Caffe and TF), convs "
            "without bias, batch norm with gamma and beta, stem max pool 3x3/2 pad 1, projection shortcut "
            "(1x1 conv + BN) in the first block of each stage, ReLU after the addition. SGD lr 0.01, "
            "momentum 0.9 as DLBench's TF resnet_train.py; He-normal init. Default batch 16, DLBench's "
            "CPU setting (GPU sweep 8-64). Karmanov (ilkarman/DeepLearningFrameworks, *_Inference.ipynb) "
            "timed this network's inference as a feature extractor: the trunk without the final Dense "
            "(23,508,032 params), batch 32, 1280 images; its infer scenario is that measurement with the "
            "1000-way Dense kept."
        ),
        quirks_not_copied=(
            "Caffe's conv1 bias (+64 params, 25,557,096) and its conv1 without pad 3",
            "Caffe's BN use_global_stats: true, i.e. batch norm in inference mode while 'training'",
            "fb.resnet.torch's stride 2 on the 3x3 conv, and its lr 0.1, weight decay 1e-4",
            "TF's BN eps 1e-3 and decay 0.9997, and its L2 weight decay 4e-5 in the loss",
            "Caffe's plain SGD without momentum",
        ),
    )
    lstm_quirks = (
        "cuDNN's second bias per gate (6,182,672 params); TF BasicLSTMCell has one",
        "CNTK's learningRatesPerSample 0.0001 and per-sample clipping 15",
        "real PTB text with truncated BPTT carrying the state between batches; dlarena's timing uses "
        "synthetic tokens and a zero initial state each batch",
    )

    def lstm(steps: int) -> Workload:
        return Workload(
            name=f"lstm{steps}", title=f"LSTM-{steps} (DLBench: PTB word LM, 2x256, {steps} steps)",
            study="shi2016",
            citation=(
                f"{_SHI}: synthetic/experiments/tensorflow/rnn/lstm/lstm.py, mxnet/mxnetbm.py "
                f"(lstm{steps}: --sequence-lens {steps} --num-hidden 256 --num-embed 256 --num-lstm-layer 2)"
            ),
            network=_lstm_lm(steps, 10000, 256, 2), recipe=_LSTM_RECIPE, default_batch_size=128,
            published_params=6_180_624,
            notes=(
                f"Vocabulary 10000, embedding 256, two LSTM layers of 256 (one bias per gate, forget bias 0, "
                f"no dropout), a Dense 256->10000 at each of the {steps} steps with per-token labels. TF PTB "
                "recipe: SGD lr 1.0, global-norm clipping 5, init uniform(-0.1, 0.1), loss summed over "
                "tokens and divided by the batch size. Default batch 128 (DLBench's sweeps use 128-512)."
            ),
            quirks_not_copied=lstm_quirks,
        )

    lstm32, lstm64 = lstm(32), lstm(64)
    return [
        fcn5, _small(fcn5, _fcn(1024, 256, 3, 1024), "1024 inputs and classes, width 256"),
        fcn8, _small(fcn8, _fcn(1024, 256, 6, 1024), "1024 inputs and classes, width 256"),
        alexnet, _small(alexnet, _alexnet(64, (96, 256, 384, 384, 256), 4, 256, 100),
                        "64x64 input, width/4, FC 256, 100 classes"),
        resnet50, _small(resnet50, _resnet50(32, 8, 100), "32x32 input, width/8, 100 classes"),
        lstm32, _small(lstm32, _lstm_lm(32, 1000, 64, 2), "vocabulary 1000, width 64"),
        lstm64, _small(lstm64, _lstm_lm(64, 1000, 64, 2), "vocabulary 1000, width 64"),
    ]


def _karmanov2017() -> list[Workload]:
    common_quirks = (
        "np.swapaxes(x, 1, 3) to make channels-last data, which also transposes H and W",
        "yield_mb's unseeded np.random.shuffle (dlarena shuffles with a seed, the same order for every "
        "framework; like yield_mb it trains complete batches only)",
    )
    cnn = Workload(
        name="karmanov-cnn", title="Karmanov CNN (VGG-style, CIFAR-10 32x32)", study="karmanov2017",
        citation=f"{_KARMANOV}: notebooks/PyTorch_CNN.ipynb, Keras_TF_CNN.ipynb, common/params.py",
        network=_karmanov_cnn(32, 1, 512, 10), recipe=_KARMANOV_CNN_RECIPE, default_batch_size=64,
        published_params=3_441_592,
        training=Training("cifar10", epochs=10, batch_size=64, source="common/params.py: EPOCHS=10, BATCHSIZE=64"),
        notes=(
            "Conv 50-50, pool, conv 100-100, pool, FC 512, FC 10, all 3x3 padded convs. The second conv "
            "of each pair is max-pooled and then ReLU'd (PyTorch, TF, MXNet); Keras ReLUs before the pool, "
            "which is the same function. Dropout 0.25 after each pool and 0.5 after FC 512. SGD lr 0.01, "
            "momentum 0.9 (classic, non-unit-gain), glorot-uniform init (the README's stated intent), "
            "batch 64 (params.py)."
        ),
        quirks_not_copied=(
            *common_quirks,
            "the Gluon notebook's Dropout 0.25 after FC 512 instead of 0.5",
            "PyTorch 0.3.1's default init and Gluon's Xavier(magnitude=2.24) instead of glorot uniform",
        ),
    )
    gru = Workload(
        name="karmanov-gru", title="Karmanov GRU (IMDB sentiment, 150 tokens)", study="karmanov2017",
        citation=f"{_KARMANOV}: notebooks/PyTorch_RNN.ipynb, Keras_TF_RNN.ipynb, common/params_lstm.py",
        network=_karmanov_gru(150, 30000, 125, 100, 2), recipe=_KARMANOV_GRU_RECIPE, default_batch_size=64,
        published_params=3_818_302,
        training=Training("imdb", epochs=3, batch_size=64, source="common/params_lstm.py: EPOCHS=3, BATCHSIZE=64"),
        notes=(
            "Embedding(30000, 125) over 150 tokens, one GRU of 100 units (cuDNN form with two biases per "
            "gate, which is the 3,818,302 of Keras' CuDNNGRU summary), only the last step's output, "
            "Dense 100->2. Adam lr 1e-3, betas 0.9/0.999, eps 1e-8; batch 64. Glorot-uniform init as the "
            "Keras layers' default."
        ),
        quirks_not_copied=(
            "the unused DROPOUT=0.2 of params_lstm.py (defined, never applied)",
            "Keras' softmax Dense with categorical cross-entropy on one-hot labels (same loss, written "
            "here as logits + softmax cross-entropy)",
            "TF's uniform(-0.1, 0.1) init of the cuDNN parameters",
            "nothing of the data: the accuracy scenario reads imdb.npz as imdb_for_library did (start 1, "
            "out-of-vocabulary 2, offset 3, 30,000 words, the last 150 tokens, padding at the end)",
        ),
    )
    return [
        cnn, _small(cnn, _karmanov_cnn(16, 4, 64, 10), "16x16 input, width/4, FC 64"),
        gru, _small(gru, _karmanov_gru(50, 2000, 32, 32, 2), "50 tokens, vocabulary 2000, width 32"),
    ]


def _shatnawi2017() -> list[Workload]:
    inferred = (
        "Shatnawi et al. published no code; the network is Keras' example of the time, which matches "
        "their description [INFERRED in the reference]."
    )
    mnist = Workload(
        name="mnist-cnn", title="MNIST CNN (Keras 2 mnist_cnn.py, 28x28)", study="shatnawi2017",
        citation=f"{_SHATNAWI} examples/mnist_cnn.py@befbdaa076",
        network=_mnist_cnn(28, 1, 128, 10), recipe=_MNIST_RECIPE, default_batch_size=128,
        published_params=1_199_882,
        training=Training(
            "mnist", epochs=12, batch_size=128, target_accuracy=0.99,
            source="examples/mnist_cnn.py: 12 epochs, batch 128, 'Gets to 99.25% test accuracy after 12 epochs'; "
            "the common target is 99%, which every framework must reach inside those 12 epochs",
        ),
        notes=(
            f"{inferred} Conv 32 and 64 (3x3 valid, ReLU), max pool 2, Dropout 0.25, Dense 128 + ReLU, "
            "Dropout 0.5, Dense 10. Adadelta with Keras 2.0 defaults (lr 1.0, rho 0.95, eps 1e-8), "
            "batch 128, 12 epochs for accuracy. The spec's layout is channels-first (1, 28, 28); Keras "
            "ran channels-last, which changes the flatten order but not the function."
        ),
        quirks_not_copied=(
            "the Keras 1.x version with 32 filters in both convs (600,810 params)",
            "Keras' softmax Dense with categorical cross-entropy (same loss, written as logits + "
            "softmax cross-entropy)",
        ),
    )
    cifar = Workload(
        name="cifar10-cnn", title="CIFAR-10 CNN (Keras cifar10_cnn.py of 2017, 32x32)", study="shatnawi2017",
        citation=f"{_SHATNAWI} examples/cifar10_cnn.py@98ec9fc972..6a36339b63",
        network=_cifar10_cnn(32, 1, 512, 10), recipe=_CIFAR10_RECIPE, default_batch_size=32,
        published_params=1_250_858,
        training=Training(
            "cifar10", epochs=50, batch_size=32, target_accuracy=0.75,
            source="examples/cifar10_cnn.py: batch 32, 'It gets to 75% validation accuracy in 25 epochs, and "
            "79% after 50 epochs'; 75% is the common target, 50 epochs the most trained",
        ),
        notes=(
            f"{inferred} Conv 32 same, conv 32 valid, pool, Dropout 0.25, conv 64 same, conv 64 valid, "
            "pool, Dropout 0.25, Dense 512 + ReLU, Dropout 0.5, Dense 10. RMSprop lr 1e-4 (rho 0.9, "
            "eps 1e-8, Keras 2.0 defaults), batch 32."
        ),
        quirks_not_copied=(
            "RMSprop's time-based learning-rate decay 1e-6 per update (dlarena's optimizers have no "
            "schedule; over a timing run its effect is nil)",
            "real-time augmentation (shifts 0.1, horizontal flips) of the example's fit_generator",
            "the earlier versions' optimizers (rmsprop lr 1e-3 before 2017-04-07, SGD before 2016-12-12)",
            "the alternative reading that the 2-conv MNIST net was also used on CIFAR-10 (1,626,442 params)",
        ),
    )
    return [
        mnist, _small(mnist, _mnist_cnn(14, 4, 32, 10), "14x14 input, width/4, FC 32"),
        cifar, _small(cifar, _cifar10_cnn(16, 4, 64, 10), "16x16 input, width/4, FC 64"),
    ]


def _chintala2015() -> list[Workload]:
    owt = Workload(
        name="alexnet-owt", title="AlexNet \"one weird trick\" (convnet-benchmarks, 224x224)",
        study="chintala2015", citation=f"{_CHINTALA}: torch7/imagenet_winners/alexnet.lua",
        network=_alexnet(224, (64, 192, 384, 256, 256), 1, 4096, 1000), recipe=_CHINTALA_RECIPE,
        default_batch_size=128, published_params=61_100_840,
        notes=(
            "cuda-convnet2 layers-imagenet-1gpu.cfg: 64-192-384-256-256, no LRN, no dropout; the batch of "
            f"128 is the study's (also zer0n/deepframeworks' AlexNet row). {_CHINTALA_NOTES}"
        ),
        quirks_not_copied=(*_CHINTALA_QUIRKS, "TF's 227x227 input with VALID padding to get 55x55 maps"),
    )
    overfeat = Workload(
        name="overfeat", title="OverFeat-fast (convnet-benchmarks, 231x231)", study="chintala2015",
        citation=f"{_CHINTALA}: torch7/imagenet_winners/overfeat.lua",
        network=_overfeat(231, 1, 1, 1000), recipe=_CHINTALA_RECIPE, default_batch_size=128,
        published_params=145_920_872,
        notes=(
            "OverFeat-fast: 96-256-512-1024-1024 convs with 2x2 max pools, FC 3072-4096-1000, 231x231 "
            f"input. {_CHINTALA_NOTES}"
        ),
        quirks_not_copied=_CHINTALA_QUIRKS,
    )
    vgg = Workload(
        name="vgg-a", title="VGG-A (VGG-11, convnet-benchmarks, 224x224)", study="chintala2015",
        citation=f"{_CHINTALA}: torch7/imagenet_winners/vgg_a.lua",
        network=_vgg_a(224, 1, 4096, 1000), recipe=_CHINTALA_RECIPE, default_batch_size=64,
        published_params=132_863_336,
        notes=f"VGG-11 without dropout; batch 64 as the study (128 for the others). {_CHINTALA_NOTES}",
        quirks_not_copied=_CHINTALA_QUIRKS,
    )
    googlenet = Workload(
        name="googlenet", title="GoogLeNet v1 (convnet-benchmarks, 224x224)", study="chintala2015",
        citation=f"{_CHINTALA}: torch7/imagenet_winners/googlenet.lua",
        network=_googlenet(224, 1, 1000), recipe=_CHINTALA_RECIPE, default_batch_size=128,
        published_params=6_998_552,
        notes=(
            "Inception v1 without LRN, auxiliary heads or dropout; each pool branch is a 3x3 stride-1 "
            "pad-1 max pool then a 1x1 conv. The 7x7 average pool over the 7x7 map at 224 is written as "
            "GlobalAvgPool2D, which is identical there. Batch 128 as the study (also zer0n/deepframeworks' "
            f"Inception v1 row). {_CHINTALA_NOTES}"
        ),
        quirks_not_copied=_CHINTALA_QUIRKS,
    )
    return [
        owt, _small(owt, _alexnet(64, (64, 192, 384, 256, 256), 4, 256, 100),
                    "64x64 input, width/4, FC 256, 100 classes"),
        overfeat, _small(overfeat, _overfeat(71, 8, 16, 100), "71x71 input, width/8, FC/16, 100 classes"),
        vgg, _small(vgg, _vgg_a(32, 8, 128, 100), "32x32 input, width/8, FC 128, 100 classes"),
        googlenet, _small(googlenet, _googlenet(64, 8, 100), "64x64 input, width/8, 100 classes"),
    ]


def _digits_mlp(hidden: int, classes: int) -> Network:
    """One hidden ReLU layer over the 64 pixels of a digit."""
    return _image_network(1, 8, (Flatten(), Dense(hidden), _relu(), Dense(classes)), classes)


def _digits_cnn(c1: int, c2: int, classes: int) -> Network:
    """Two padded 3x3 convs, each ReLU'd and max-pooled (8 -> 4 -> 2), then the logits."""
    layers: tuple[Layer, ...] = (
        Conv2D(c1, 3, padding=1), _relu(), MaxPool2D(2),
        Conv2D(c2, 3, padding=1), _relu(), MaxPool2D(2),
        Flatten(), Dense(classes),
    )
    return _image_network(1, 8, layers, classes)


_DIGITS_CITATION = (
    "Alpaydin and Kaynak 1998, UCI Optical Recognition of Handwritten Digits (the 1,797-image test set, "
    "8x8, 16 grey levels), as scikit-learn ships it (sklearn/datasets/data/digits.csv.gz)"
)
# Adam at its usual lr 1e-3 with glorot-uniform weights: no tuning per framework is needed or done.
_DIGITS_RECIPE = Recipe(Optimizer("adam", lr=1e-3), Init("glorot_uniform"))
# 97% test accuracy: what a small network reaches on these digits in seconds (scikit-learn's own
# examples report 97-98% for an MLP or an SVM); issue 6's target for every default framework.
DIGITS_TARGET_ACCURACY = 0.97
_DIGITS_TRAINING = Training(
    "digits", epochs=40, batch_size=32, target_accuracy=DIGITS_TARGET_ACCURACY,
    source="dlarena: 359 held-out digits, stratified with a fixed seed; at most 40 epochs of 44 batches",
)


def _digits() -> list[Workload]:
    notes = (
        "Real data that installs with dlarena (scikit-learn's copy of the UCI digits), so that the "
        "default suite trains to accuracy on a machine with no network. 1,438 training and 359 test "
        "images, pixels scaled to [0, 1]. No dropout, so that with the same initial weights and batch "
        "order every framework computes the same training run up to rounding."
    )
    return [
        Workload(
            name="digits-mlp", title="Digits MLP (8x8 digits, 64-128-10)", study="dlarena",
            citation=_DIGITS_CITATION, network=_digits_mlp(128, 10), recipe=_DIGITS_RECIPE,
            default_batch_size=32, notes=notes, training=_DIGITS_TRAINING,
        ),
        Workload(
            name="digits-cnn", title="Digits CNN (8x8 digits, conv 16-32, 2 pools)", study="dlarena",
            citation=_DIGITS_CITATION, network=_digits_cnn(16, 32, 10), recipe=_DIGITS_RECIPE,
            default_batch_size=32, notes=notes, training=_DIGITS_TRAINING,
        ),
    ]


def _index(workloads: Iterable[Workload]) -> dict[str, Workload]:
    catalogue: dict[str, Workload] = {}
    for workload in workloads:
        # A repeated name would silently replace an entry; it is a bug in this file.
        if workload.name in catalogue:
            raise ValueError(f"workload {workload.name!r} is defined twice")
        if workload.study not in STUDIES:
            raise ValueError(f"workload {workload.name!r} names an unknown study {workload.study!r}")
        catalogue[workload.name] = workload
    return catalogue


def _transformers() -> list[Workload]:
    bert, gpt2 = transformers.bert_base(), transformers.gpt2_124m()
    small = transformers.SMALL_DESCRIPTION
    return [
        bert, dataclasses.replace(_small(bert, transformers.bert(transformers.BERT_SMALL, transformers.BERT_CLASSES),
                                         small), head_params=0),
        gpt2, _small(gpt2, transformers.gpt2(transformers.GPT2_SMALL_TWIN), small),
    ]


CATALOGUE: dict[str, Workload] = _index(
    [*_shi2016(), *_karmanov2017(), *_shatnawi2017(), *_chintala2015(), *_transformers(), *_digits()]
)
"""Every workload by name: per study, each published network followed by its small twin."""


def get_workload(name: str) -> Workload:
    """The workload called ``name``; an unknown name is a user's mistake that lists the valid ones."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownNameError("workload", name, CATALOGUE) from None
