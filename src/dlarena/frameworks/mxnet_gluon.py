"""MXNet 1.9.1 Gluon, hybridized: the ``gluon`` framework (Karmanov's "MXNet (Gluon)").

The spec becomes an ``nn.HybridSequential`` of Gluon layers, hybridized with ``static_alloc`` and
``static_shape`` (one cached graph per mode, its memory planned once), and a training step is Gluon's
loop: ``autograd.record()``, forward and loss, ``backward()``, ``Trainer.step(1)`` (the loss is
already divided as the recipe says, so the Trainer's rescaling is 1).

``gluon.rnn.LSTM`` and ``GRU`` (layout ``NTC``) concatenate their per-layer parameters into the fused
``RNN`` operator's vector. The spec's LSTM has one bias per gate: each layer's ``h2h_bias`` is held at
zero with ``grad_req='null'``, so it is neither trained nor counted.
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn, rnn
from mxnet.gluon.contrib.nn import HybridConcurrent

from dlarena.frameworks import kernel, mxnet_common
from dlarena.frameworks.base import Parity, Unsupported
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
    pair,
)
from dlarena.spec.weights import layer_params, walk

SPELLING = mxnet_common.SPELLING


class _Residual(gluon.HybridBlock):  # type: ignore[misc]
    """``body(x) + shortcut(x)``; no shortcut block is the identity."""

    def __init__(self, body: nn.HybridSequential, shortcut: nn.HybridSequential | None) -> None:
        super().__init__()
        with self.name_scope():
            self.body = body
            self.shortcut = shortcut

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.body(x) + (self.shortcut(x) if self.shortcut is not None else x)


class _Recurrent(gluon.HybridBlock):  # type: ignore[misc]
    """A Gluon LSTM or GRU from zero states, returning every step or the last one."""

    def __init__(self, layer: rnn.LSTM | rnn.GRU, return_sequences: bool) -> None:
        super().__init__()
        with self.name_scope():
            self.rnn = layer
        self.return_sequences = return_sequences

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        out = self.rnn(x)
        # The last step by slicing: SequenceLast's backward corrupts the heap in MXNet 1.9.1 on the CPU.
        return out if self.return_sequences else F.squeeze(F.slice_axis(out, axis=1, begin=-1, end=None), axis=1)


class Model(kernel.Model):
    """The spec's network as a hybridized ``nn.HybridSequential`` (``self.net``) with a ``gluon.Trainer``."""

    conventions = mxnet_common.CONVENTIONS

    def __init__(self, workload: Any, precision: str, device: str, batch_size: int, training: bool) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        self.context = mxnet_common.context(device)
        self.blocks: dict[str, Any] = {}  # spec path -> the block with its parameters
        self.net = self._sequence(self.network.layers, self.network.input_shape, "", inference=False)
        # MXNet's RNN operator differentiates only a training-mode forward (on the CPU it keeps what its
        # backward needs only then: rnn-inl.h, "Check forward init error"), so ``gradients`` runs the
        # inference-mode function in training mode: a twin net sharing every Parameter, without dropout
        # and with batch norm on its running statistics (use_global_stats).
        self.gradient_net = self._sequence(self.network.layers, self.network.input_shape, "", inference=True)
        # Every parameter is overwritten by the kernel's starting weights; Zero only gives them values.
        self.net.initialize(mx.init.Zero(), ctx=self.context)
        for net in (self.net, self.gradient_net):
            net.cast(self.precision)
            net.hybridize(static_alloc=True, static_shape=True)
        for block in self.blocks.values():
            if isinstance(block, rnn.LSTM):  # the spec's single bias per gate: every layer's h2h bias is 0
                for frozen in block.collect_params(".*h2h_bias").values():
                    frozen.set_data(mx.nd.zeros(frozen.shape, self.context, dtype=self.precision))
                    frozen.grad_req = "null"
        self.trainable = {name: param for name, param in self.net.collect_params().items() if param.grad_req != "null"}
        self.loss_function = gluon.loss.SoftmaxCrossEntropyLoss()
        if training:
            name, arguments = mxnet_common.optimizer(self.recipe.optimizer, "gluon")
            self.trainer = gluon.Trainer(self.trainable, name, arguments, kvstore=None)
            self.divisor = kernel.loss_divisor(self.network, self.recipe, batch_size)

    # Building ---------------------------------------------------------------------------------------

    def _sequence(self, layers: tuple[Layer, ...], shape: Shape, prefix: str, inference: bool) -> nn.HybridSequential:
        sequence = nn.HybridSequential()
        for index, layer in enumerate(layers):
            sequence.add(self._layer(layer, shape, f"{prefix}{index}", inference))
            shape = layer.out_shape(shape)
        return sequence

    def _layer(self, layer: Layer, shape: Shape, path: str, inference: bool) -> Any:
        if isinstance(layer, Residual):
            shortcut = self._sequence(layer.shortcut, shape, f"{path}.shortcut.", inference) if layer.shortcut else None
            return _Residual(self._sequence(layer.body, shape, f"{path}.body.", inference), shortcut)
        if isinstance(layer, Concat):
            concat = HybridConcurrent(axis=1)
            for index, branch in enumerate(layer.branches):
                concat.add(self._sequence(branch, shape, f"{path}.branches.{index}.", inference))
            return concat
        if isinstance(layer, MaxPool2D | AvgPool2D):
            stride = layer.stride if layer.stride is not None else layer.kernel
            if isinstance(layer, MaxPool2D):  # ceil_mode=False: the spec's floor((n + 2p - k) / s) + 1
                return nn.MaxPool2D(pool_size=pair(layer.kernel), strides=pair(stride), padding=pair(layer.padding))
            return nn.AvgPool2D(pool_size=pair(layer.kernel), strides=pair(stride), padding=pair(layer.padding),
                                count_include_pad=True)
        if isinstance(layer, GlobalAvgPool2D):
            pool = nn.HybridSequential()
            pool.add(nn.GlobalAvgPool2D(), nn.Flatten())  # (N, C, 1, 1) -> (N, C)
            return pool
        if isinstance(layer, Activation):
            return nn.Activation(layer.function)
        if isinstance(layer, Dropout):  # inverted; the identity outside autograd's training mode
            return nn.HybridSequential() if inference else nn.Dropout(layer.rate)
        if isinstance(layer, Flatten):
            return nn.Flatten()
        # The twin shares the first net's Parameters (Gluon's ``params=``).
        shared = {"params": self.blocks[path].params} if inference else {}
        block = self._parametrised(layer, shape, inference, shared)
        if not inference:
            self.blocks[path] = block.rnn if isinstance(block, _Recurrent) else block
        return block

    def _parametrised(self, layer: Layer, shape: Shape, inference: bool, shared: dict[str, Any]) -> Any:
        if isinstance(layer, Dense):  # flatten=False: over the last axis, every time step of a sequence too
            return nn.Dense(layer.units, use_bias=layer.bias, flatten=False, in_units=shape[-1], **shared)
        if isinstance(layer, Conv2D):
            return nn.Conv2D(layer.filters, pair(layer.kernel), strides=pair(layer.stride), padding=pair(layer.padding),
                             use_bias=layer.bias, in_channels=shape[0], **shared)
        if isinstance(layer, BatchNorm):
            return nn.BatchNorm(axis=1, momentum=mxnet_common.batch_norm_momentum(layer), epsilon=layer.eps,
                                in_channels=shape[0], use_global_stats=inference, **shared)
        if isinstance(layer, Embedding):
            return nn.Embedding(layer.vocab, layer.dim, **shared)
        if isinstance(layer, LSTM | GRU):
            kind = rnn.LSTM if isinstance(layer, LSTM) else rnn.GRU
            return _Recurrent(kind(layer.hidden, num_layers=layer.layers, layout="NTC", input_size=shape[-1], **shared),
                              layer.return_sequences)
        raise Unsupported(f"the gluon backend has no translation for the layer type {type(layer).__name__}")

    # The kernel's contract ----------------------------------------------------------------------------

    def bindings(self) -> list[kernel.Binding]:
        return self.bind({spec.name: getattr(self.blocks[path], mxnet_common.parameter_suffix(path, layer, spec))
                          for path, layer, shape in walk(self.network.layers, self.network.input_shape)
                          for spec in layer_params(path, layer, shape)})

    def read(self, handle: Any) -> np.ndarray:
        return np.asarray(handle.data(self.context).asnumpy())

    def write(self, handle: Any, value: np.ndarray) -> None:
        if handle.shape != value.shape:
            raise ValueError(f"{handle.name} has shape {handle.shape} in Gluon, not {value.shape}")
        handle.set_data(mx.nd.array(value, self.context, dtype=self.precision))

    def reset_statistics(self) -> None:
        for block in self.blocks.values():
            if isinstance(block, nn.BatchNorm):
                block.running_mean.set_data(mx.nd.zeros(block.running_mean.shape, self.context, dtype=self.precision))
                block.running_var.set_data(mx.nd.ones(block.running_var.shape, self.context, dtype=self.precision))

    def device_batch(self, array: np.ndarray) -> Any:
        # Token ids and labels too: Gluon's Embedding and losses take them as floating-point numbers.
        return mx.nd.array(array, self.context, dtype=self.precision)

    def _loss(self, net: nn.HybridSequential, inputs: Any, labels: Any, divisor: int) -> Any:
        logits = net(inputs)
        # One row per label position (a language model's every token), summed, divided as the recipe says.
        per_label = self.loss_function(logits.reshape((-1, self.network.classes)), labels.reshape((-1,)))
        return per_label.sum() / divisor

    def infer_step(self, inputs: Any) -> Any:
        return self.net(inputs)  # outside autograd.record: inference mode

    def logits(self, inputs: Any) -> np.ndarray:
        return np.asarray(self.net(inputs).asnumpy())

    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        with autograd.record(train_mode=True):
            loss = self._loss(self.gradient_net, inputs, labels,
                              kernel.loss_divisor(self.network, self.recipe, inputs.shape[0]))
        loss.backward()
        return float(loss.asscalar()), {binding.name: binding.handle.grad(self.context).asnumpy()
                                        for binding in self.bindings()}

    def train_step(self, inputs: Any, labels: Any) -> Any:
        with autograd.record():
            loss = self._loss(self.net, inputs, labels, self.divisor)
        loss.backward()
        if self.recipe.grad_clip_norm is not None:
            gluon.utils.clip_global_norm([param.grad(self.context) for param in self.trainable.values()],
                                         self.recipe.grad_clip_norm, check_isfinite=False)
        self.trainer.step(1)
        return mxnet_common.LazyLoss(loss)

    def trainable_params(self) -> int:
        # What the Trainer updates: the frozen h2h biases and batch norm's running statistics are not in it.
        return sum(int(np.prod(param.shape)) for param in self.trainable.values())

    def parity(self) -> Parity:
        return mxnet_common.parity("hybridized", api="gluon.nn.HybridSequential",
                                   hybridize="static_alloc=True, static_shape=True")


class Backend(mxnet_common.Backend):
    name = "gluon"
    model_class = Model
