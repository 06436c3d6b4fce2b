"""Lasagne 0.1 on Theano (``lasagne``): the spec's network as ``lasagne.layers``, stepped by one
``theano.function`` with ``lasagne.updates`` (Karmanov's "Lasagne" row).

Only a worker imports this module, and it imports neither Theano nor Lasagne at its top: Theano reads
its configuration once, at import, so ``Backend.__init__`` calls ``theano_setup.configure`` first
and only then imports them (``_lasagne()`` fetches the modules afterwards).

What Lasagne 0.1 (the last release, 2015) lacks or spells differently, and how this module meets the spec:

* Its ``Conv2DLayer`` calls ``theano.tensor.nnet.conv2d``, whose default flips the kernel (a true
  convolution); the spec's convolution is a cross-correlation, as in every other framework. Lasagne
  0.1's knob is the ``convolution`` callable: this module passes ``conv2d`` with
  ``filter_flip=False``, so the kernel is stored unflipped, in the canonical layout.
* It has no batch normalisation (``BatchNormLayer`` came in 0.2): ``_batch_norm_layer`` is that layer
  written the way Lasagne 0.2 wrote it (a ``Layer`` whose running statistics are updated through
  Theano's ``default_update``), keeping a running mean and variance as the spec does.
* ``DenseLayer`` flattens every trailing axis: a Dense applied at every time step (the language
  model's output) is a ``ReshapeLayer`` to ``(B*T, F)``, the ``DenseLayer``, and a reshape back.
* ``LSTMLayer`` (separate ``W_in``, ``W_hid``, ``b`` per gate, ``i, f, c, o``: the canonical order) is
  built with ``peepholes=False`` and ``learn_init=False``; 0.1 has no ``only_return_final``, so the
  last step is a ``SliceLayer``.
* ``GRULayer`` has one bias per gate, added outside the reset gate (``c = tanh(W_xc x + r*(W_hc h) +
  b_c)``): the spec's GRU (cuDNN form) needs the recurrent bias ``b_hn`` inside the reset gate's
  product, which Lasagne cannot hold, so a GRU is unsupported.
* The loss is Lasagne's ``categorical_crossentropy`` on ``softmax(logits)``, which Theano's optimizer
  fuses into its numerically stable softmax cross-entropy op; global-norm clipping is Lasagne's
  ``total_norm_constraint``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from dlarena.frameworks import kernel, theano_setup
from dlarena.frameworks.base import Parity, Unsupported
from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.spec import Workload
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

# The recipe's optimizers as lasagne.updates functions and their keywords. SGD with Nesterov momentum
# is ``nesterov_momentum`` (chosen in ``_updates``); Lasagne has no weight decay in its updates, so a
# recipe that sets one is refused by the kernel.
SPELLING: kernel.OptimizerSpelling = {
    "sgd": ("sgd", {"lr": "learning_rate"}),
    "sgd_momentum": ("momentum", {"lr": "learning_rate", "momentum": "momentum", "nesterov": "nesterov"}),
    "adam": ("adam", {"lr": "learning_rate", "beta1": "beta1", "beta2": "beta2", "eps": "epsilon"}),
    "rmsprop": ("rmsprop", {"lr": "learning_rate", "rho": "rho", "eps": "epsilon"}),
    "adadelta": ("adadelta", {"lr": "learning_rate", "rho": "rho", "eps": "epsilon"}),
}

# Why a GRU is unsupported: the registry's sentence (one writer), also raised if a GRU reaches the builder.
GRU_UNSUPPORTED = FRAMEWORKS["lasagne"].unsupported_layers["GRU"]


def _lasagne() -> Any:
    """The lasagne module, imported by ``Backend.__init__`` once Theano was configured."""
    import lasagne

    return lasagne


@functools.cache
def _batch_norm_layer() -> type:
    """Batch normalisation as a Lasagne layer over axis 1 (channels), the spec's convention: ``momentum``
    is the weight of the new batch statistic (Lasagne 0.2's ``alpha``), and the running variance takes
    the unbiased batch variance, as PyTorch's. In training the running statistics are updated through
    ``default_update`` on clones of the shared variables (Lasagne 0.2's way), so every
    ``theano.function`` that computes the training output also updates them."""
    import theano
    import theano.tensor as T

    lasagne = _lasagne()

    class BatchNormLayer(lasagne.layers.Layer):  # type: ignore[misc,name-defined]
        def __init__(self, incoming: Any, eps: float, momentum: float, **kwargs: Any) -> None:
            super().__init__(incoming, **kwargs)
            self.eps, self.momentum = eps, momentum
            self.axes = (0, *range(2, len(self.input_shape)))
            shape = (self.input_shape[1],)
            constant = lasagne.init.Constant
            self.gamma = self.add_param(constant(1.0), shape, "gamma", regularizable=False)
            self.beta = self.add_param(constant(0.0), shape, "beta", regularizable=False)
            self.mean = self.add_param(constant(0.0), shape, "mean", trainable=False, regularizable=False)
            self.var = self.add_param(constant(1.0), shape, "var", trainable=False, regularizable=False)

        def get_output_for(self, input: Any, deterministic: bool = False, **kwargs: Any) -> Any:
            if deterministic:
                mean, var = self.mean, self.var
            else:
                mean, var = input.mean(self.axes), input.var(self.axes)
                count = T.cast(input.size // input.shape[1], input.dtype)
                running_mean = theano.clone(self.mean, share_inputs=False)
                running_var = theano.clone(self.var, share_inputs=False)
                running_mean.default_update = (1 - self.momentum) * running_mean + self.momentum * mean
                running_var.default_update = ((1 - self.momentum) * running_var
                                              + self.momentum * var * count / (count - 1))
                mean += 0 * running_mean  # the clones must be in the graph for their updates to run
                var += 0 * running_var
            pattern = ["x", 0] + ["x"] * (input.ndim - 2)
            scale = self.gamma / T.sqrt(var + self.eps)
            return (input - mean.dimshuffle(pattern)) * scale.dimshuffle(pattern) + self.beta.dimshuffle(pattern)

    return BatchNormLayer


class _Builder:
    """The spec's layers as Lasagne layers; ``handles`` maps each canonical parameter name to the tuple
    of shared variables holding it (one, or one per gate of an LSTM, concatenated on the last axis)."""

    def __init__(self) -> None:
        import theano.tensor as T

        self.lasagne, self.T = _lasagne(), T
        self.zero = self.lasagne.init.Constant(0.0)  # starting weights come from the kernel
        self.handles: dict[str, tuple[Any, ...]] = {}
        self.statistics: list[tuple[Any, Any]] = []  # each batch norm's running mean and variance
        self.nonlinearities = {"relu": self.lasagne.nonlinearities.rectify,
                               "sigmoid": self.lasagne.nonlinearities.sigmoid,
                               "tanh": self.lasagne.nonlinearities.tanh}

    def sequence(self, layers: tuple[Layer, ...], net: Any, shape: Shape, prefix: str) -> Any:
        index = 0
        while index < len(layers):
            layer, path = layers[index], f"{prefix}{index}"
            follower = layers[index + 1] if index + 1 < len(layers) else None
            # Lasagne's idiom: the activation is the Dense or Conv2D layer's own ``nonlinearity``.
            fold = isinstance(layer, Dense | Conv2D) and isinstance(follower, Activation)
            nonlinearity = self.nonlinearities[follower.function] if isinstance(follower, Activation) and fold else None
            net = self.layer(layer, net, shape, path, nonlinearity)
            shape = layer.out_shape(shape)
            index += 2 if fold else 1
        return net

    def layer(self, layer: Layer, net: Any, shape: Shape, path: str, nonlinearity: Any) -> Any:
        L = self.lasagne.layers
        if isinstance(layer, Dense):
            steps = len(shape) == 2  # a Dense at every time step: (B, T, F) -> (B*T, F) and back
            inner = L.ReshapeLayer(net, (-1, shape[-1])) if steps else net
            dense = L.DenseLayer(inner, layer.units, W=self.zero, b=self.zero if layer.bias else None,
                                 nonlinearity=nonlinearity)
            self._bind(path, kernel=(dense.W,), bias=(dense.b,) if layer.bias else None)
            return L.ReshapeLayer(dense, (-1, shape[0], layer.units)) if steps else dense
        if isinstance(layer, Conv2D):
            conv = L.Conv2DLayer(net, layer.filters, pair(layer.kernel), stride=pair(layer.stride),
                                 pad=pair(layer.padding), W=self.zero, b=self.zero if layer.bias else None,
                                 nonlinearity=nonlinearity,
                                 convolution=functools.partial(self.T.nnet.conv2d, filter_flip=False))
            self._bind(path, kernel=(conv.W,), bias=(conv.b,) if layer.bias else None)
            return conv
        if isinstance(layer, MaxPool2D | AvgPool2D):
            # Theano's max pooling never lets a padded position win; average_inc_pad counts them as zeros.
            mode = "max" if isinstance(layer, MaxPool2D) else "average_inc_pad"
            stride = pair(layer.stride if layer.stride is not None else layer.kernel)
            return L.Pool2DLayer(net, pair(layer.kernel), stride=stride, pad=pair(layer.padding), mode=mode)
        if isinstance(layer, GlobalAvgPool2D):
            return L.GlobalPoolLayer(net, pool_function=self.T.mean)
        if isinstance(layer, BatchNorm):
            norm = _batch_norm_layer()(net, eps=layer.eps, momentum=layer.momentum)
            self.handles[f"{path}.gamma"], self.handles[f"{path}.beta"] = (norm.gamma,), (norm.beta,)
            self.statistics.append((norm.mean, norm.var))
            return norm
        if isinstance(layer, Activation):
            return L.NonlinearityLayer(net, self.nonlinearities[layer.function])
        if isinstance(layer, Dropout):
            return L.DropoutLayer(net, p=layer.rate)  # rescale=True: inverted dropout
        if isinstance(layer, Flatten):
            return L.FlattenLayer(net, outdim=2)
        if isinstance(layer, Embedding):
            embedding = L.EmbeddingLayer(net, layer.vocab, layer.dim, W=self.zero)
            self.handles[f"{path}.table"] = (embedding.W,)
            return embedding
        if isinstance(layer, LSTM):
            for k in range(layer.layers):
                gates = [L.Gate(W_in=self.zero, W_hid=self.zero, b=self.zero, W_cell=None, nonlinearity=function)
                         for function in (self.nonlinearities["sigmoid"], self.nonlinearities["sigmoid"],
                                          self.nonlinearities["tanh"], self.nonlinearities["sigmoid"])]
                net = L.LSTMLayer(net, layer.hidden, *gates, peepholes=False, learn_init=False)
                names = ("ingate", "forgetgate", "cell", "outgate")
                for canonical, prefix in (("input_kernel", "W_in_to_"), ("recurrent_kernel", "W_hid_to_"),
                                          ("bias", "b_")):
                    self.handles[f"{path}.layer{k}.{canonical}"] = tuple(getattr(net, prefix + g) for g in names)
            return net if layer.return_sequences else L.SliceLayer(net, indices=-1, axis=1)
        if isinstance(layer, GRU):
            raise Unsupported(GRU_UNSUPPORTED)
        if isinstance(layer, Residual):
            body = self.sequence(layer.body, net, shape, f"{path}.body.")
            shortcut = self.sequence(layer.shortcut, net, shape, f"{path}.shortcut.") if layer.shortcut else net
            return L.ElemwiseSumLayer([body, shortcut])
        if isinstance(layer, Concat):
            return L.ConcatLayer([self.sequence(branch, net, shape, f"{path}.branches.{i}.")
                                  for i, branch in enumerate(layer.branches)], axis=1)
        raise Unsupported(f"the lasagne module has no mapping for the layer type {type(layer).__name__}")

    def _bind(self, path: str, kernel: tuple[Any, ...], bias: tuple[Any, ...] | None) -> None:
        self.handles[f"{path}.kernel"] = kernel
        if bias is not None:
            self.handles[f"{path}.bias"] = bias


class Model(kernel.Model):
    conventions = kernel.Conventions()  # NCHW images, Dense (in, out), conv (out, in, kh, kw), gates i, f, g, o

    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool,
                 **options: Any) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        import theano
        import theano.tensor as T

        self.theano, self.T, lasagne = theano, T, _lasagne()
        # Lasagne creates its parameters (and Theano its constants) in floatX: the checker's precision.
        theano.config.floatX = precision
        network = self.network
        if network.input_kind == "tokens":
            self.x = T.lmatrix("inputs")
        else:
            self.x = T.TensorType(precision, (False,) * (1 + len(network.input_shape)))("inputs")
        self.y = T.TensorType("int64", (False,) * (1 + len(network.label_shape)))("labels")
        builder = _Builder()
        self.output = builder.sequence(network.layers, lasagne.layers.InputLayer((None, *network.input_shape), self.x),
                                       network.input_shape, "")
        self.handles, self.statistics = builder.handles, builder.statistics
        self.params = [var for handle in self.handles.values() for var in handle]
        # Each function is compiled at its first call, as the theano module does: compiling is the
        # first step's cost (the report's "first step"), never the build's.
        self._logits_fn: Any = None
        self._gradients_fn: Any = None
        self._train_fn: Any = None

    def _loss(self, logits: Any) -> Any:
        """Summed softmax cross-entropy over every label position, divided by kernel.loss_divisor
        (per sample: the batch size is symbolic, so one compiled function takes any batch)."""
        T, lasagne = self.T, _lasagne()
        flat = logits.reshape((-1, logits.shape[-1]))
        total = lasagne.objectives.categorical_crossentropy(T.nnet.softmax(flat), self.y.flatten()).sum()
        per_sample = kernel.loss_divisor(self.network, self.recipe, 1)
        return total / T.cast(self.y.shape[0] * per_sample, self.precision)

    def _updates(self, loss: Any) -> Any:
        lasagne = _lasagne()
        name, arguments = kernel.optimizer_arguments(self.recipe.optimizer, SPELLING, "lasagne")
        if arguments.pop("nesterov", False):
            name = "nesterov_momentum"
        trainable = lasagne.layers.get_all_params(self.output, trainable=True)
        gradients = self.theano.grad(loss, trainable)
        if self.recipe.grad_clip_norm is not None:
            gradients = lasagne.updates.total_norm_constraint(gradients, self.recipe.grad_clip_norm)
        return getattr(lasagne.updates, name)(gradients, trainable, **arguments)

    def bindings(self) -> list[kernel.Binding]:
        return self.bind(self.handles)

    def read(self, handle: Any) -> np.ndarray:
        return np.concatenate([var.get_value() for var in handle], axis=-1)

    def write(self, handle: Any, value: np.ndarray) -> None:
        for var, part in zip(handle, np.split(value, len(handle), axis=-1), strict=True):
            var.set_value(np.ascontiguousarray(part))

    def reset_statistics(self) -> None:
        for mean, var in self.statistics:
            mean.set_value(np.zeros_like(mean.get_value()))
            var.set_value(np.ones_like(var.get_value()))

    def logits(self, inputs: Any) -> np.ndarray:
        if self._logits_fn is None:
            output = _lasagne().layers.get_output(self.output, deterministic=True)
            self._logits_fn = self.theano.function([self.x], output)
        return np.asarray(self._logits_fn(inputs))

    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        if self._gradients_fn is None:
            loss = self._loss(_lasagne().layers.get_output(self.output, deterministic=True))
            self._gradients_fn = self.theano.function([self.x, self.y], [loss, *self.theano.grad(loss, self.params)])
        loss, *values = self._gradients_fn(inputs, labels)
        found, position = {}, 0
        for name, handle in self.handles.items():
            found[name] = np.concatenate(values[position:position + len(handle)], axis=-1)
            position += len(handle)
        return float(loss), found

    def train_step(self, inputs: Any, labels: Any) -> Any:
        if self._train_fn is None:
            loss = self._loss(_lasagne().layers.get_output(self.output, deterministic=False))
            self._train_fn = self.theano.function([self.x, self.y], loss, updates=self._updates(loss))
        return self._train_fn(inputs, labels)

    def trainable_params(self) -> int:
        return int(_lasagne().layers.count_params(self.output, trainable=True))

    def parity(self) -> Parity:
        threads, source = theano_setup.blas_threads()
        return Parity(threads=threads, execution="graph",
                      details={"threads_source": source, **theano_setup.config_record()})


class Backend(kernel.KernelBackend):
    name = "lasagne"
    model_class = Model

    def __init__(self, threads: int, **options: Any) -> None:
        theano_setup.configure(threads)  # before Theano is imported
        theano_setup.require_compiler()
        super().__init__(threads, **options)
        import theano  # noqa: F401  (configured above)

        theano_setup.install_downsample_shim()  # Lasagne 0.1 imports Theano's removed downsample module
        _lasagne()

    def version(self) -> str:
        return f"{_lasagne().__version__} (Theano {theano_setup.theano_version()})"

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        import theano
        import theano.tensor as T

        left, right = T.matrix(dtype=str(a.dtype)), T.matrix(dtype=str(b.dtype))
        return np.asarray(theano.function([left, right], T.dot(left, right))(a, b))


