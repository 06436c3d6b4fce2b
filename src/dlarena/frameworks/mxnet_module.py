"""MXNet 1.9.1, symbolic Module API: the ``mxnet`` framework (DLBench's and Karmanov's "MXNet (Module)").

The spec becomes one ``mx.sym`` graph (``FullyConnected``, ``Convolution``, ``Pooling``, ``BatchNorm``,
the fused ``RNN`` ...), ending in ``MakeLoss`` of the summed ``softmax_cross_entropy`` divided by the
recipe's divisor. An ``mx.mod.Module`` is bound to the batch's shapes, given its optimizer by
``init_optimizer``, and a timed training step is ``forward_backward`` then ``update``, as in MXNet's
own training loops. Inference binds the logits alone (``for_training=False``).

Parameters live in the bound executors. A Module copies them in with ``set_params`` and out with
``get_params``; this module keeps at most one Module current and moves the parameters when another
one (inference, training, a loss over another batch size) is needed, so that every canonical read and
write sees the same numbers. Gradients for ``dlarena verify`` are read from the executor's grad arrays.
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np

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
DATA, LABEL = "data", "softmax_label"


def _name(path: str) -> str:
    """A layer's symbol name: its path in the spec ("7.body.0" -> "l7_body_0"); MXNet appends
    ``_weight``, ``_bias``, ``_gamma``, ``_moving_mean`` ... to it for the layer's variables."""
    return "l" + path.replace(".", "_")


class Model(kernel.Model):
    """The spec's network as ``mx.sym`` graphs, stepped by ``mx.mod.Module``."""

    conventions = mxnet_common.CONVENTIONS

    def __init__(self, workload: Any, precision: str, device: str, batch_size: int, training: bool) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        self.context = mxnet_common.context(device)
        # The training form runs dropout and batch statistics when is_train; the inference form (no
        # dropout, batch norm on its running statistics even when is_train) is what ``gradients``
        # differentiates. Both name their variables alike, so one set of parameters serves both.
        self.logits_symbol = self._network(inference=False)
        self.inference_logits = self._network(inference=True)
        self.args, self.aux = self._zero_parameters()
        self.modules: dict[tuple[str, int], mx.mod.Module] = {}
        self.current: mx.mod.Module | None = None  # the Module that holds the parameters, or None: self.args
        if training:
            self.train_module = self._module(("train", batch_size), self._loss_symbol(self.logits_symbol, batch_size),
                                             (batch_size, *self.network.input_shape),
                                             (batch_size, *self.network.label_shape))
            name, arguments = mxnet_common.optimizer(self.recipe.optimizer, "mxnet")
            # kvstore=None: one device, the updater works on the executor's arrays in place.
            self.train_module.init_optimizer(kvstore=None, optimizer=name, optimizer_params=arguments)
        elif batch_size:  # an inference runner: bound to its batch now, as the training Module is
            self._module(("logits", 0), self.logits_symbol, (batch_size, *self.network.input_shape), None)

    # Building ---------------------------------------------------------------------------------------

    def _network(self, inference: bool) -> Any:
        return self._sequence(self.network.layers, mx.sym.var(DATA), self.network.input_shape, "", inference)

    def _sequence(self, layers: tuple[Layer, ...], x: Any, shape: Shape, prefix: str, inference: bool) -> Any:
        for index, layer in enumerate(layers):
            x = self._layer(layer, x, shape, f"{prefix}{index}", inference)
            shape = layer.out_shape(shape)
        return x

    def _layer(self, layer: Layer, x: Any, shape: Shape, path: str, inference: bool) -> Any:
        name = _name(path)
        if isinstance(layer, Residual):
            body = self._sequence(layer.body, x, shape, f"{path}.body.", inference)
            return body + (self._sequence(layer.shortcut, x, shape, f"{path}.shortcut.", inference)
                           if layer.shortcut else x)
        if isinstance(layer, Concat):
            return mx.sym.concat(*(self._sequence(branch, x, shape, f"{path}.branches.{index}.", inference)
                                   for index, branch in enumerate(layer.branches)), dim=1)
        if isinstance(layer, Dense):  # flatten=False: over the last axis, every time step of a sequence too
            return mx.sym.FullyConnected(x, num_hidden=layer.units, no_bias=not layer.bias, flatten=False, name=name)
        if isinstance(layer, Conv2D):
            return mx.sym.Convolution(x, num_filter=layer.filters, kernel=pair(layer.kernel), stride=pair(layer.stride),
                                      pad=pair(layer.padding), no_bias=not layer.bias, name=name)
        if isinstance(layer, MaxPool2D | AvgPool2D):
            stride = layer.stride if layer.stride is not None else layer.kernel
            # "valid": the spec's floor((n + 2p - k) / s) + 1; average pooling counts the padding.
            extra = {"count_include_pad": True} if isinstance(layer, AvgPool2D) else {}
            return mx.sym.Pooling(x, kernel=pair(layer.kernel), stride=pair(stride), pad=pair(layer.padding),
                                  pool_type="max" if isinstance(layer, MaxPool2D) else "avg",
                                  pooling_convention="valid", **extra)
        if isinstance(layer, GlobalAvgPool2D):
            return mx.sym.Flatten(mx.sym.Pooling(x, kernel=(1, 1), global_pool=True, pool_type="avg"))
        if isinstance(layer, BatchNorm):
            # fix_gamma=False: MXNet's default holds gamma at 1.
            return mx.sym.BatchNorm(x, fix_gamma=False, eps=layer.eps, momentum=mxnet_common.batch_norm_momentum(layer),
                                    use_global_stats=inference, name=name)
        if isinstance(layer, Activation):
            return mx.sym.Activation(x, act_type=layer.function)
        if isinstance(layer, Dropout):
            return x if inference else mx.sym.Dropout(x, p=layer.rate)
        if isinstance(layer, Flatten):
            return mx.sym.Flatten(x)
        if isinstance(layer, Embedding):  # ids arrive as floating-point numbers, as MXNet takes them
            return mx.sym.Embedding(x, input_dim=layer.vocab, output_dim=layer.dim, dtype=self.precision, name=name)
        if isinstance(layer, LSTM | GRU):
            return self._recurrent(layer, x, shape, name)
        raise Unsupported(f"the mxnet backend has no translation for the layer type {type(layer).__name__}")

    def _recurrent(self, layer: LSTM | GRU, x: Any, shape: Shape, name: str) -> Any:
        """The fused ``RNN`` operator (cuDNN's packing: every layer's i2h and h2h matrices, then their
        biases) over a vector concatenated from one variable per canonical parameter. The spec's LSTM
        has one bias per gate: its h2h biases are constant zeros in the vector, not variables, so they
        are never trained nor counted."""
        size, hidden = layer.gates * layer.hidden, layer.hidden
        weights, biases = [], []
        for k in range(layer.layers):
            n_in = shape[-1] if k == 0 else hidden
            weights += [mx.sym.var(f"{name}_l{k}_i2h_weight", shape=(size, n_in)),
                        mx.sym.var(f"{name}_l{k}_h2h_weight", shape=(size, hidden))]
            biases += [mx.sym.var(f"{name}_l{k}_i2h_bias", shape=(size,)),
                       mx.sym.var(f"{name}_l{k}_h2h_bias", shape=(size,)) if isinstance(layer, GRU)
                       else mx.sym.zeros(shape=(size,), dtype=self.precision)]
        parameters = mx.sym.concat(*(mx.sym.reshape(w, shape=(-1,)) for w in weights), *biases, dim=0)
        # Zero initial states; batch 0 is "to be inferred" from the data, as Gluon's begin_state does.
        states = {"state": mx.sym.zeros(shape=(layer.layers, 0, hidden), dtype=self.precision)}
        if isinstance(layer, LSTM):
            states["state_cell"] = mx.sym.zeros(shape=(layer.layers, 0, hidden), dtype=self.precision)
        out = mx.sym.RNN(mx.sym.swapaxes(x, dim1=0, dim2=1), parameters, state_size=hidden, num_layers=layer.layers,
                         mode="lstm" if isinstance(layer, LSTM) else "gru", name=name, **states)
        if layer.return_sequences:
            return mx.sym.swapaxes(out, dim1=0, dim2=1)
        # The last step by slicing: SequenceLast's backward corrupts the heap in MXNet 1.9.1 on the CPU
        # (glibc aborts, "corrupted size vs. prev_size", on karmanov-gru-small's gradients).
        return mx.sym.squeeze(mx.sym.slice_axis(out, axis=0, begin=-1, end=None), axis=0)

    def _loss_symbol(self, logits: Any, batch_size: int) -> Any:
        # log_softmax and pick over the class axis, for every label position. (mx.sym.softmax_cross_entropy,
        # the fused op, crashed in its backward after SequenceLast and a FullyConnected: karmanov-gru-small.)
        total = -mx.sym.sum(mx.sym.pick(mx.sym.log_softmax(logits, axis=-1), mx.sym.var(LABEL), axis=-1))
        return mx.sym.MakeLoss(total / kernel.loss_divisor(self.network, self.recipe, batch_size))

    def _zero_parameters(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every variable of the graph as MXNet infers its shape (batch 1), in the model's precision;
        running means 0 and variances 1."""
        symbol = self._loss_symbol(self.logits_symbol, 1)
        arg_shapes, _, aux_shapes = symbol.infer_shape(**{DATA: (1, *self.network.input_shape),
                                                          LABEL: (1, *self.network.label_shape)})
        args = {name: mx.nd.zeros(shape, self.context, dtype=self.precision)
                for name, shape in zip(symbol.list_arguments(), arg_shapes, strict=True) if name not in (DATA, LABEL)}
        aux = {name: (mx.nd.ones if name.endswith("_moving_var") else mx.nd.zeros)(shape, self.context,
                                                                                 dtype=self.precision)
               for name, shape in zip(symbol.list_auxiliary_states(), aux_shapes, strict=True)}
        return args, aux

    # Modules and where the parameters are -----------------------------------------------------------

    def _module(self, key: tuple[str, int], symbol: Any, data: Shape, labels: Shape | None) -> mx.mod.Module:
        """The Module for ``key``, bound at first use (a loss Module with labels is bound for training),
        made current. Module.forward rebinds by itself to a batch of another shape."""
        module = self.modules.get(key)
        # An inference Module is bound afresh whenever the parameters were elsewhere: MKL-DNN's subgraph
        # backend (on by default for inference binds) keeps the weights of its first forward, and later
        # set_params calls leave its outputs unchanged (measured: doubled weights, the same logits).
        if module is not None and not module.for_training and module is not self.current:
            module = None
        if module is None:
            module = mx.mod.Module(symbol, data_names=(DATA,), label_names=(LABEL,) if labels else None,
                                   context=self.context)
            module.bind(data_shapes=[mx.io.DataDesc(DATA, data, self.precision)],
                        label_shapes=[mx.io.DataDesc(LABEL, labels, self.precision)] if labels else None,
                        for_training=labels is not None)
            args, aux = self._host()
            module.init_params(arg_params=args, aux_params=aux)  # copies them in
            self.modules[key] = self.current = module
        return self._activate(module)

    def _host(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The parameters, copied out of the current Module (which then stops being current)."""
        if self.current is not None:
            args, aux = self.current.get_params()
            self.args = {name: value.copy() for name, value in args.items()}
            self.aux = {name: value.copy() for name, value in aux.items()}
            self.current = None
        return self.args, self.aux

    def _activate(self, module: mx.mod.Module) -> mx.mod.Module:
        if module is not self.current:
            args, aux = self._host()
            module.set_params(args, aux)
            self.current = module
        return module

    # The kernel's contract ----------------------------------------------------------------------------

    def bindings(self) -> list[kernel.Binding]:
        return self.bind({spec.name: f"{_name(path)}_{mxnet_common.parameter_suffix(path, layer, spec)}"
                          for path, layer, shape in walk(self.network.layers, self.network.input_shape)
                          for spec in layer_params(path, layer, shape)})

    def read(self, handle: str) -> np.ndarray:
        return np.asarray(self._host()[0][handle].asnumpy())

    def write(self, handle: str, value: np.ndarray) -> None:
        args = self._host()[0]
        if args[handle].shape != value.shape:
            raise ValueError(f"{handle} has shape {args[handle].shape} in MXNet, not {value.shape}")
        args[handle] = mx.nd.array(value, self.context, dtype=self.precision)

    def reset_statistics(self) -> None:
        aux = self._host()[1]
        for name, value in aux.items():
            value[:] = 1.0 if name.endswith("_moving_var") else 0.0

    def device_batch(self, array: np.ndarray) -> Any:
        # Token ids and labels too: MXNet's Embedding and losses take them as floating-point numbers.
        return mx.nd.array(array, self.context, dtype=self.precision)

    def infer_step(self, inputs: Any) -> Any:
        module = self._module(("logits", 0), self.logits_symbol, inputs.shape, None)
        module.forward(mx.io.DataBatch([inputs]), is_train=False)
        return module.get_outputs()[0]

    def logits(self, inputs: Any) -> np.ndarray:
        return np.asarray(self.infer_step(inputs).asnumpy())

    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        batch = inputs.shape[0]
        module = self._module(("gradients", batch), self._loss_symbol(self.inference_logits, batch), inputs.shape,
                              labels.shape)
        module.forward(mx.io.DataBatch([inputs], [labels]), is_train=True)
        module.backward()
        gradients = module._exec_group.execs[0].grad_dict  # one device: one executor
        return float(module.get_outputs()[0].asscalar()), {
            binding.name: gradients[binding.handle].asnumpy() for binding in self.bindings()}

    def train_step(self, inputs: Any, labels: Any) -> Any:
        module = self._activate(self.train_module)
        module.forward_backward(mx.io.DataBatch([inputs], [labels]))
        if self.recipe.grad_clip_norm is not None:
            mx.gluon.utils.clip_global_norm([grads[0] for grads in module._exec_group.grad_arrays],
                                            self.recipe.grad_clip_norm, check_isfinite=False)
        module.update()
        # A copy: the executor writes every step's loss into the same output array.
        return mxnet_common.LazyLoss(module.get_outputs()[0].copy())

    def trainable_params(self) -> int:
        # The graph's variables: the LSTM's zero h2h biases are constants, not among them.
        return sum(int(value.size) for value in self.args.values())

    def parity(self) -> Parity:
        return mxnet_common.parity("graph", api="mx.mod.Module")


class Backend(mxnet_common.Backend):
    name = "mxnet"
    model_class = Model
