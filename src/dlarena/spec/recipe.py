"""How a workload trains: loss, optimizer, hyper-parameters and initialisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# "adamw": Adam with decoupled weight decay (Loshchilov and Hutter 2019), w -= lr * (update + wd * w),
# as BERT's and GPT-2's training code apply it; "adam" with weight_decay adds wd * w to the gradient.
OptimizerName = Literal["sgd", "adam", "adamw", "adadelta", "rmsprop"]
# "mean": mean over every labelled element (samples, or tokens of a language model);
# "sum_over_batch": sum over tokens divided by the batch size (TensorFlow's PTB model, DLBench LSTM).
LossReduction = Literal["mean", "sum_over_batch"]
InitName = Literal["glorot_uniform", "he_normal", "uniform", "normal", "framework_default"]

# FLOPs per parameter for one optimizer update, counted from the update rules: SGD w -= lr*g (2);
# momentum adds v = m*v + g (2 more); RMSprop and Adadelta keep running squares and divide by a
# square root (about 8 and 12); Adam keeps two moments with bias correction (about 12); AdamW adds its
# decay, w * wd subtracted (2 more).
UPDATE_FLOPS_PER_PARAM: dict[str, int] = {"sgd": 2, "sgd_momentum": 4, "rmsprop": 8, "adadelta": 12, "adam": 12,
                                          "adamw": 14}


@dataclass(frozen=True)
class Optimizer:
    name: OptimizerName
    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    rho: float = 0.9
    eps: float = 1e-8

    @property
    def update_flops_per_param(self) -> int:
        key = "sgd_momentum" if self.name == "sgd" and self.momentum else self.name
        return UPDATE_FLOPS_PER_PARAM[key]

    def describe(self) -> str:
        if self.name == "sgd":
            extra = f", momentum {self.momentum:g}" + (" (Nesterov)" if self.nesterov else "") if self.momentum else ""
            text = f"SGD lr {self.lr:g}{extra}"
        elif self.name in ("adam", "adamw"):
            name = "AdamW" if self.name == "adamw" else "Adam"
            text = f"{name} lr {self.lr:g}, betas {self.beta1:g}/{self.beta2:g}, eps {self.eps:g}"
        elif self.name == "adadelta":
            text = f"Adadelta lr {self.lr:g}, rho {self.rho:g}, eps {self.eps:g}"
        else:
            text = f"RMSprop lr {self.lr:g}, rho {self.rho:g}, eps {self.eps:g}"
        decay = "decoupled weight decay" if self.name == "adamw" else "weight decay"
        return text + (f", {decay} {self.weight_decay:g}" if self.weight_decay else "")


@dataclass(frozen=True)
class Init:
    """Weight initialisation; ``scale`` is the half-width of ``uniform``, the standard deviation of ``normal``."""

    name: InitName
    scale: float = 0.0

    def describe(self) -> str:
        if self.name == "uniform":
            return f"uniform(-{self.scale:g}, {self.scale:g})"
        return f"normal(0, {self.scale:g})" if self.name == "normal" else self.name


@dataclass(frozen=True)
class Recipe:
    optimizer: Optimizer
    init: Init
    loss_reduction: LossReduction = "mean"
    grad_clip_norm: float | None = None  # global-norm clipping, as TensorFlow's clip_by_global_norm

    def describe(self) -> str:
        parts = [
            f"softmax cross-entropy ({self.loss_reduction.replace('_', ' ')})",
            self.optimizer.describe(),
            f"init {self.init.describe()}",
        ]
        if self.grad_clip_norm is not None:
            parts.append(f"gradient global-norm clip {self.grad_clip_norm:g}")
        return "; ".join(parts)
