"""The network spec: layers, networks, recipes and the workload catalogue. Pure Python + NumPy."""

from dlarena.spec.layers import (
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
    Layer,
    MaxPool2D,
    Residual,
    Shape,
    SpecError,
)
from dlarena.spec.network import Network
from dlarena.spec.recipe import Init, Optimizer, Recipe
from dlarena.spec.workload import SCENARIOS, TIMING_SCENARIOS, Training, Workload

__all__ = [
    "GRU",
    "LSTM",
    "SCENARIOS",
    "TIMING_SCENARIOS",
    "Activation",
    "AvgPool2D",
    "BatchNorm",
    "Concat",
    "Conv2D",
    "Dense",
    "Dropout",
    "Embedding",
    "Flatten",
    "GlobalAvgPool2D",
    "Init",
    "Layer",
    "MaxPool2D",
    "Network",
    "Optimizer",
    "Recipe",
    "Residual",
    "Shape",
    "SpecError",
    "Training",
    "Workload",
]
