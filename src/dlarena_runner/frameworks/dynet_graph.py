"""DyNet 2.1.2 (``dynet``): a ``ParameterCollection``, a fresh computation graph per step
(``dy.renew_cg()``), the network as expressions over batched inputs, and a DyNet trainer, as DyNet's
own examples write it.

Runs in the ``dynet`` environment (Python 3.8, NumPy 1.24; DyNet's newest wheel is cp38) under
``dlarena_runner.job_worker``.

Choices, each because the spec asks for it (every one measured on DyNet 2.1.2):

* DyNet computes in float32 only: its tensors have no other element type, so a float64 model is
  ``Unsupported`` (``dlarena verify`` then reports the float64 pass as not applicable).
* DyNet's arrays are column-major with the batch as a separate last axis; ``dy.inputTensor(a,
  batched=True)`` keeps NumPy's indexing. Images go in as ``(H, W, C) x N`` (DyNet's convolution
  layout), so convolution filters are ``(kh, kw, in, out)`` ("hwio"; ``dy.conv2d`` is a
  cross-correlation), dense kernels ``(out, in)`` (``W * x``), and Flatten transposes to ``(W, H, C)``
  before it reshapes, so that the column-major flattening is the spec's ``(C, H, W)`` row-major one.
* ``VanillaLSTMBuilder`` is the spec's LSTM: one bias per gate, no peepholes, gate blocks ``i, f, o,
  g``, parameters ``W_x (4H, in)``, ``W_h (4H, H)``, ``b (4H)``. It adds a constant ``forget_bias``
  (1.0 by default) to the forget gate's pre-activation at every step, outside its parameters; the
  spec's forget bias is 0, so the builder is made with ``forget_bias=0.0``. Its GRU (``GRUBuilder``)
  applies the reset gate before the recurrent product with one bias per gate, which is not the spec's
  GRU (registry: ``unsupported_layers``).
* Padding: ``dy.conv2d`` knows only VALID and SAME. SAME is used where it pads the spec's symmetric
  ``p`` on each side; elsewhere zeros (convolution) or minus infinity (max pooling: a padded
  position never wins) are concatenated around the input, which is then convolved VALID. DyNet 2.1
  has no average pooling op (registry: ``unsupported_layers``).
* Batch norm is written from DyNet's reductions (``mean_dim`` over height, width and the batch),
  as DyNet has no batch-norm op in Python; its running statistics live in NumPy and enter the graph
  as inputs, updated after each training step with the spec's momentum (PyTorch's convention, the
  unbiased batch variance).
* Batches enter each graph from DyNet's own memory: ``dy.inputTensor`` converts a NumPy array
  element by element in the Python binding (0.6 us a float, measured: 2.8 s for an AlexNet batch
  of 32, more than DyNet's own step), so ``device_batch`` stores a batch once, before timing, as the
  rows of a lookup table of a collection no trainer sees, and each step looks its rows up as
  constants (``dy.lookup_batch(..., update=False)``, 18 ms for that batch). The same conversion
  makes loading and reading weights slow (``set_value``, ``as_array``: about 0.7 us a float), which
  is building and verification time, never timed.
* The loss is ``pickneglogsoftmax_batch`` summed over the batch (and time steps), times
  ``1 / loss_divisor``. A language model's time steps are stacked into the batch
  (``concatenate_to_batch``) before its output layer: one product instead of one per step.
* Trainers, checked against the update rules step by step: ``SimpleSGDTrainer`` (``p -= lr g``);
  ``MomentumSGDTrainer`` (``v = m v - lr g; p += v``: PyTorch's ``v = m v + g; p -= lr v`` at a
  constant rate); ``AdamTrainer`` (eps added to the uncorrected ``sqrt(v)``, as TensorFlow and Keras,
  not PyTorch's bias-corrected one); ``RMSPropTrainer`` (eps inside the square root, Tieleman and
  Hinton's form, as MXNet's); ``AdadeltaTrainer`` (no learning rate: Zeiler's 1). DyNet has no
  Nesterov momentum. Its weight decay (``ParameterCollection.set_weight_decay``) shrinks the stored
  weights multiplicatively, outside the gradient: not the recipe's L2 term added to the gradient, so
  a recipe with weight decay is ``Unsupported``.
* A DyNet trainer clips the gradients' global norm to 5 unless told otherwise: clipping is turned off
  (``set_clip_threshold(0)``) unless the recipe asks for it, and then it is the recipe's threshold
  (DyNet scales by ``threshold / norm`` above it, TensorFlow's ``clip_by_global_norm``). Lookup
  parameters are updated densely (``set_sparse_updates(False)``): sparse updates skip the rows a
  batch did not look up, which changes momentum and Adam.
* DyNet's CPU build runs its Eigen kernels in the calling thread (no BLAS, no OpenMP): one thread
  whatever the cell asks for, and ``set_threads`` says so. Its memory pools are fixed before import
  (``dynet_config.set``; DyNet reads no environment variable for them) and grow as a graph needs.
  Importing DyNet flushes subnormal numbers in the importing thread (measured: NumPy's product of
  1e-20 and 1e-21 is 4e-41 before ``import dynet`` and 0 after), so its cells probe as ``flush``.
"""

from typing import Any, ClassVar, Dict, List, Optional, Tuple

import dynet_config
import numpy as np

from dlarena_runner.model import Layer, Unsupported
from dlarena_runner.model import Model as BaseModel

# DyNet allocates its memory pools at import and touches them (measured: 512 MB, its default, is
# 558 MB of resident memory before anything is built; 64 MB is 100 MB). The pools grow when a graph
# needs more, so the smallest start keeps a small network's memory small; warm-up grows them.
DYNET_MEMORY_MB = "64"
# DyNet's random seed (0 would draw one from the clock): only dropout masks come from it, the
# weights are always loaded.
DYNET_SEED = 1
dynet_config.set(mem=DYNET_MEMORY_MB, random_seed=DYNET_SEED)

import dynet as dy  # noqa: E402  (after its configuration, which DyNet reads at import)

_ACTIVATIONS = {"relu": dy.rectify, "sigmoid": dy.logistic, "tanh": dy.tanh}
_LAYERS = ("Dense", "Conv2D", "MaxPool2D", "GlobalAvgPool2D", "BatchNorm", "Activation", "Dropout", "Flatten",
           "Embedding", "LSTM", "Residual", "Concat")
# The spec's layers DyNet has no op or builder for (the registry's unsupported_layers say the same).
_MISSING = {
    "AvgPool2D": "DyNet 2.1 has no average pooling op (its only pooling is maxpooling2d)",
    "GRU": "DyNet's GRUBuilder applies the reset gate before the recurrent product with one bias per gate; the "
           "spec's GRU (cuDNN form) multiplies a separate recurrent bias and U h by the reset gate",
}
# DyNet's trainers clip the global gradient norm to 5 by default; a threshold <= 0 turns clipping off.
NO_CLIPPING = 0.0
# AdadeltaTrainer has no learning rate: its step is Zeiler's, unscaled.
ADADELTA_IMPLIED_LR = 1.0
# What a padded max-pool position holds: it never wins a window that has a real input.
MAX_POOL_PAD = -np.inf
# The recipe's fields each trainer honours; any other must stay at the recipe's default.
_DEFAULTS = {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999, "rho": 0.9,
             "eps": 1e-8}
_HONOURED = {"sgd": ("momentum",), "adam": ("beta1", "beta2", "eps"), "rmsprop": ("rho", "eps"),
             "adadelta": ("rho", "eps")}


def version() -> str:
    return str(dy.__gitversion__)  # "2.1.2"; dy.__version__ says "2.1"


def set_threads(threads: int) -> Optional[int]:
    """DyNet has no thread setting: its CPU kernels run in the calling thread."""
    return 1


def denormal_product(a: Any, b: Any) -> Any:
    """``a @ b`` by DyNet's matrix product on CPU, as the steps multiply."""
    dy.renew_cg()
    return (dy.inputTensor(a) * dy.inputTensor(b)).npvalue()


class _Batch:
    """A batch as DyNet's steps take it, made once (``device_batch``). Images and vectors are stored in
    DyNet's memory, one row per sample of a lookup table of their own collection (never trained), in
    DyNet's column-major ``(H, W, C)`` order; token ids (inputs or labels) are one list per time step
    and one list in time-major order (the order of ``concatenate_to_batch``), class labels a list."""

    def __init__(self, array: Any, collection: Any) -> None:
        self.size = int(array.shape[0])
        self.table: Any = None
        self.shape: Tuple[int, ...] = ()
        self.steps: List[List[int]] = []
        self.flat: List[int] = []
        if array.dtype.kind in "iu":
            ids = np.asarray(array, dtype=np.int64)
            if ids.ndim == 1:
                self.flat = [int(value) for value in ids]
            else:
                self.steps = [[int(value) for value in ids[:, t]] for t in range(ids.shape[1])]
                self.flat = [value for step in self.steps for value in step]
            return
        if array.ndim == 4:  # (N, C, H, W) -> rows in (H, W, C) column-major order: (N, C, W, H) row-major
            _, channels, height, width = array.shape
            self.shape = (height, width, channels)
            rows = array.transpose(0, 1, 3, 2).reshape(self.size, -1)
        else:
            rows = array
            self.shape = (int(array.shape[1]),)
        # The table lives as long as its collection: a lookup into a collection already collected by
        # Python crashes the process (measured: a segmentation fault), so the batch holds it too.
        self.collection = collection
        self.table = collection.add_lookup_parameters(rows.shape, init=dy.ConstInitializer(0.0))
        self.table.init_from_array(np.ascontiguousarray(rows, dtype=np.float32))

    def expression(self) -> Any:
        """The batch in the current graph: its rows looked up as constants (no gradient)."""
        rows = dy.lookup_batch(self.table, list(range(self.size)), update=False)
        return dy.reshape(rows, self.shape, batch_size=self.size) if len(self.shape) > 1 else rows


class _Sequence:
    """A sequence's values: one batched expression per time step, or all steps stacked into the batch
    (time-major), whichever the last layer made; each form is made from the other when asked."""

    def __init__(self, size: int, steps: Optional[List[Any]] = None, stacked: Any = None,
                 length: int = 0) -> None:
        self.size, self._steps, self._stacked = size, steps, stacked
        self.length = len(steps) if steps is not None else length

    def steps(self) -> List[Any]:
        if self._steps is None:
            n = self.size
            self._steps = [dy.pick_batch_elems(self._stacked, list(range(t * n, (t + 1) * n)))
                           for t in range(self.length)]
        return self._steps

    def stacked(self) -> Any:
        if self._stacked is None:
            self._stacked = dy.concatenate_to_batch(self.steps())
        return self._stacked

    def map(self, function: Any) -> "_Sequence":
        return _Sequence(self.size, stacked=function(self.stacked()), length=self.length)


def _same_pads(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """The padding above and below of DyNet's SAME convolution (its documented formula)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Norm:
    """One batch norm's running statistics (NumPy, per channel) and momentum."""

    def __init__(self, channels: int, momentum: float) -> None:
        self.momentum = momentum
        self.mean = np.zeros(channels, np.float32)
        self.variance = np.ones(channels, np.float32)
        self.pending: Optional[Tuple[Any, Any, int]] = None  # this step's batch statistics, to fold in

    def reset(self) -> None:
        self.mean[:] = 0.0
        self.variance[:] = 1.0


class Model(BaseModel):
    conventions: ClassVar[Dict[str, str]] = {"dense_kernel": "out_in", "conv_kernel": "hwio",
                                             "recurrent_kernel": "out_in", "lstm_gates": "ifog"}

    def __init__(self, network: Any, recipe: Dict[str, Any], precision: str, batch_size: int, training: bool,
                 loss_divisor: int) -> None:
        super().__init__(network, recipe, precision, batch_size, training, loss_divisor)
        if precision != "float32":
            raise Unsupported("DyNet computes in float32 only")
        for layer in network.leaves():
            if layer.type in _MISSING:
                raise Unsupported(f"dynet cannot express {layer.type}: {_MISSING[layer.type]}")
            if layer.type not in _LAYERS:
                raise Unsupported("dynet runs {}, not {}".format(", ".join(_LAYERS), layer.type))
        if network.input_kind not in ("image", "vector", "tokens"):
            raise Unsupported(f"dynet takes images, vectors or tokens, not {network.input_kind} inputs")
        if network.input_kind == "tokens" and network.layers[0].type != "Embedding":
            raise Unsupported("dynet looks token ids up in an Embedding, which the network does not start with")
        self.collection = dy.ParameterCollection()
        self.data = dy.ParameterCollection()  # the batches (device_batch), which no trainer sees
        self.handles_: Dict[str, Any] = {}
        self.builders: Dict[str, Any] = {}
        self.norms: Dict[str, _Norm] = {}
        for layer in network.leaves():
            self._parameters(layer)
        self.trainer: Any = self._trainer() if training else None

    # Building ----------------------------------------------------------------------------------

    def _add(self, name: str, shape: Tuple[int, ...]) -> Any:
        parameter = self.collection.add_parameters(shape, init=dy.ConstInitializer(0.0))
        self.handles_[name] = parameter
        return parameter

    def _parameters(self, layer: Layer) -> None:
        """The layer's DyNet parameters, in DyNet's layouts (the kernel converts the weights)."""
        path, kind = layer.path, layer.type
        if kind == "Dense":
            self._add(path + ".kernel", (layer.units, layer.input_shape[-1]))
            if layer.bias:
                self._add(path + ".bias", (layer.units,))
        elif kind == "Conv2D":
            (kh, kw), channels = layer.kernel, layer.input_shape[0]
            self._add(path + ".kernel", (kh, kw, channels, layer.filters))
            if layer.bias:
                self._add(path + ".bias", (layer.filters,))
        elif kind == "BatchNorm":
            channels = layer.input_shape[0]
            self._add(path + ".gamma", (channels,))
            self._add(path + ".beta", (channels,))
            self.norms[path] = _Norm(channels, layer.momentum)
        elif kind == "Embedding":
            table = self.collection.add_lookup_parameters((layer.vocab, layer.dim), init=dy.ConstInitializer(0.0))
            self.handles_[path + ".table"] = table
        elif kind == "LSTM":
            builder = dy.VanillaLSTMBuilder(layer.layers, layer.input_shape[-1], layer.hidden, self.collection,
                                            forget_bias=0.0)
            builder.disable_dropout()
            self.builders[path] = builder
            for k, parameters in enumerate(builder.get_parameters()):
                for role, parameter in zip(("input_kernel", "recurrent_kernel", "bias"), parameters):
                    self.handles_[f"{path}.layer{k}.{role}"] = parameter

    def _trainer(self) -> Any:
        optimizer = dict(self.recipe["optimizer"])
        name = optimizer["name"]
        if name not in _HONOURED:
            raise Unsupported(f"dynet has no trainer for the recipe's {name}; it runs {', '.join(sorted(_HONOURED))}")
        if optimizer.get("weight_decay"):
            raise Unsupported("DyNet's weight decay (ParameterCollection.set_weight_decay) shrinks the stored "
                              "weights multiplicatively outside the gradient, not the recipe's L2 term added to "
                              "the gradient")
        if optimizer.get("nesterov"):
            raise Unsupported("DyNet's MomentumSGDTrainer has no Nesterov momentum, and the recipe asks for it")
        for field, default in sorted(_DEFAULTS.items()):
            if field not in _HONOURED[name] and field not in ("weight_decay", "nesterov") \
                    and optimizer.get(field, default) != default:
                raise Unsupported(f"dynet's {name} trainer has no {field} setting, and the recipe sets it to "
                                  f"{optimizer[field]}")
        collection, lr = self.collection, optimizer["lr"]
        if name == "sgd" and optimizer.get("momentum"):
            trainer = dy.MomentumSGDTrainer(collection, learning_rate=lr, mom=optimizer["momentum"])
        elif name == "sgd":
            trainer = dy.SimpleSGDTrainer(collection, learning_rate=lr)
        elif name == "adam":
            trainer = dy.AdamTrainer(collection, alpha=lr, beta_1=optimizer["beta1"], beta_2=optimizer["beta2"],
                                     eps=optimizer["eps"])
        elif name == "rmsprop":
            trainer = dy.RMSPropTrainer(collection, learning_rate=lr, eps=optimizer["eps"], rho=optimizer["rho"])
        else:
            if lr != ADADELTA_IMPLIED_LR:
                raise Unsupported(f"DyNet's AdadeltaTrainer has no learning rate (it steps by "
                                  f"{ADADELTA_IMPLIED_LR:g}), and the recipe sets lr to {lr}")
            trainer = dy.AdadeltaTrainer(collection, eps=optimizer["eps"], rho=optimizer["rho"])
        clip = self.recipe.get("grad_clip_norm")
        trainer.set_clip_threshold(float(clip) if clip is not None else NO_CLIPPING)
        trainer.set_sparse_updates(False)
        return trainer

    # The forward pass, on a fresh graph ------------------------------------------------------------

    def _forward(self, batch: _Batch, training: bool) -> Any:
        """The logits' expression: ``(classes) x N``, or for per-token labels ``(classes) x (T*N)``
        in time-major order."""
        if batch.table is not None:
            x: Any = batch.expression()
        else:
            x = batch  # token ids: the Embedding looks them up
        x = self._sequence(self.network.layers, x, batch.size, training)
        return x.stacked() if isinstance(x, _Sequence) else x

    def _sequence(self, layers: List[Layer], x: Any, size: int, training: bool) -> Any:
        for layer in layers:
            x = self._layer(layer, x, size, training)
        return x

    def _layer(self, layer: Layer, x: Any, size: int, training: bool) -> Any:
        kind, handles = layer.type, self.handles_
        if isinstance(x, _Sequence) and kind in ("Dense", "Activation", "Dropout"):
            return x.map(lambda value: self._layer(layer, value, size * x.length, training))
        if kind == "Dense":
            kernel = handles[layer.path + ".kernel"]
            if layer.bias:
                return dy.affine_transform([handles[layer.path + ".bias"], kernel, x])
            return kernel * x
        if kind == "Conv2D":
            return self._conv(layer, x, size)
        if kind == "MaxPool2D":
            (ph, pw), (sh, sw) = layer.padding, layer.stride
            if ph or pw:
                x = self._pad(x, layer, ph, pw, MAX_POOL_PAD, size)
            return dy.maxpooling2d(x, list(layer.kernel), [sh, sw], is_valid=True)
        if kind == "GlobalAvgPool2D":
            return dy.mean_dim(x, [0, 1], False)
        if kind == "BatchNorm":
            return self._batch_norm(layer, x, size, training)
        if kind == "Activation":
            return _ACTIVATIONS[layer.function](x)
        if kind == "Dropout":
            return dy.dropout(x, layer.rate) if training and layer.rate else x
        if kind == "Flatten":
            if len(layer.input_shape) == 3:  # (H, W, C) column-major -> (W, H, C): flattens as (C, H, W)
                x = dy.transpose(x, [1, 0, 2])
            return dy.reshape(x, (int(np.prod(layer.output_shape)),), batch_size=size)
        if kind == "Embedding":
            table = handles[layer.path + ".table"]
            return _Sequence(size, steps=[dy.lookup_batch(table, ids) for ids in x.steps])
        if kind == "LSTM":
            outputs = self.builders[layer.path].initial_state().transduce(x.steps())
            return _Sequence(size, steps=outputs) if layer.return_sequences else outputs[-1]
        if kind == "Residual":
            body = self._sequence(layer.body, x, size, training)
            return body + (self._sequence(layer.shortcut, x, size, training) if layer.shortcut else x)
        if kind == "Concat":
            return dy.concatenate([self._sequence(branch, x, size, training) for branch in layer.branches], d=2)
        raise Unsupported(f"the dynet module has no mapping for the layer type {kind}")

    def _pad(self, x: Any, layer: Layer, ph: int, pw: int, value: float, size: int) -> Any:
        """``x`` (H, W, C) with ``ph`` rows above and below and ``pw`` columns each side of ``value``."""
        channels, height, width = layer.input_shape
        if ph:
            rows = dy.constant((ph, width, channels), value, batch_size=size)
            x = dy.concatenate([rows, x, rows], d=0)
        if pw:
            columns = dy.constant((height + 2 * ph, pw, channels), value, batch_size=size)
            x = dy.concatenate([columns, x, columns], d=1)
        return x

    def _conv(self, layer: Layer, x: Any, size: int) -> Any:
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
        _, height, width = layer.input_shape
        same = (ph or pw) and _same_pads(height, kh, sh) == (ph, ph) and _same_pads(width, kw, sw) == (pw, pw)
        if (ph or pw) and not same:
            x = self._pad(x, layer, ph, pw, 0.0, size)
        kernel = self.handles_[layer.path + ".kernel"]
        if layer.bias:
            return dy.conv2d_bias(x, kernel, self.handles_[layer.path + ".bias"], [sh, sw], is_valid=not same)
        return dy.conv2d(x, kernel, [sh, sw], is_valid=not same)

    def _batch_norm(self, layer: Layer, x: Any, size: int, training: bool) -> Any:
        """Per channel over the batch (and height and width). An image's ``(H, W, C)`` is viewed as an
        ``(H*W, C)`` matrix: a row of ``1/(H*W)`` times it is the per-channel mean, and a column of ones
        times a ``(1, C)`` row spreads a per-channel value over every position. DyNet's broadcasting
        element-wise ops (``x - row`` with a ``(1, 1, C)`` operand) are slow: 35 ms each on a ResNet-50
        block's batch of 8, where the whole batch norm written with products takes 8 ms (measured)."""
        norm = self.norms[layer.path]
        # As expressions that back-propagate: Parameters.expr()'s default in DyNet 2.1.2 is update=False,
        # a constant (measured: zero gradients), whatever its docstring says.
        gamma, beta = self.handles_[layer.path + ".gamma"].expr(True), self.handles_[layer.path + ".beta"].expr(True)
        channels = layer.input_shape[0]
        image = len(layer.input_shape) == 3
        positions = int(np.prod(layer.input_shape[1:])) if image else 1
        if image:
            x = dy.reshape(x, (positions, channels), batch_size=size)
            average = dy.constant((1, positions), 1.0 / positions)
            spread = dy.ones((positions, 1))

            def row(value: Any) -> Any:
                return dy.reshape(value, (1, channels))

            def per_position(value: Any) -> Any:
                return spread * value
        else:  # (C) x N: DyNet broadcasts over the batch natively
            def row(value: Any) -> Any:
                return value

            def per_position(value: Any) -> Any:
                return value

        if training:
            mean = dy.mean_batches(average * x) if image else dy.mean_batches(x)
            centred = x - per_position(mean)
            squares = dy.square(centred)
            variance = dy.mean_batches(average * squares) if image else dy.mean_batches(squares)
            norm.pending = (mean, variance, size * positions)
            scale = dy.cdiv(row(gamma), dy.sqrt(variance + layer.eps))
            y = dy.cmult(centred, per_position(scale)) + per_position(row(beta))
        else:
            inverse = 1.0 / np.sqrt(norm.variance.astype(np.float64) + layer.eps)
            scale = dy.cmult(row(gamma), row(dy.inputTensor(inverse.astype(np.float32))))
            shift = row(beta) - dy.cmult(row(dy.inputTensor(norm.mean)), scale)
            y = dy.cmult(x, per_position(scale)) + per_position(shift)
        return dy.reshape(y, (layer.input_shape[1], layer.input_shape[2], channels), batch_size=size) if image else y

    def _fold_statistics(self) -> None:
        """The step's batch statistics into the running ones (after the forward pass computed them)."""
        for norm in self.norms.values():
            if norm.pending is None:
                continue
            mean, variance, count = norm.pending
            unbiased = variance.npvalue().reshape(-1) * (count / max(count - 1, 1))
            norm.mean[:] = (1 - norm.momentum) * norm.mean + norm.momentum * mean.npvalue().reshape(-1)
            norm.variance[:] = (1 - norm.momentum) * norm.variance + norm.momentum * unbiased
            norm.pending = None

    def _loss(self, logits: Any, labels: _Batch) -> Any:
        return dy.sum_batches(dy.pickneglogsoftmax_batch(logits, labels.flat)) * (1.0 / self.loss_divisor)

    # Parameters ----------------------------------------------------------------------------------

    def handles(self) -> Dict[str, Any]:
        return dict(self.handles_)

    def read(self, handle: Any) -> Any:
        return np.array(handle.as_array(), dtype=np.float32)

    def write(self, handle: Any, value: Any) -> None:
        value = np.ascontiguousarray(value, dtype=np.float32)
        if isinstance(handle, dy.LookupParameters):
            handle.init_from_array(value)
        else:
            handle.set_value(value)

    def reset_statistics(self) -> None:
        for norm in self.norms.values():
            norm.reset()

    def trainable_params(self) -> int:
        return int(self.collection.parameter_count())

    # Batches and steps -----------------------------------------------------------------------------

    def device_batch(self, array: Any) -> Any:
        return array if isinstance(array, _Batch) else _Batch(np.asarray(array), self.data)

    def _outputs(self, logits: Any, size: int) -> Any:
        """The logits' expression as NumPy, batch first: ``(N, classes)`` or ``(N, T, classes)``."""
        classes = self.network.classes
        values = np.asarray(logits.npvalue(), dtype=np.float32).reshape(classes, -1)
        if self.network.label_kind == "token":
            return np.ascontiguousarray(values.reshape(classes, -1, size).transpose(2, 1, 0))
        return np.ascontiguousarray(values.T)

    def logits(self, inputs: Any) -> Any:
        batch = self.device_batch(inputs)
        dy.renew_cg()
        return self._outputs(self._forward(batch, False), batch.size)

    def infer_step(self, inputs: Any) -> Any:
        """The logits computed in DyNet's memory (``forward``); copying them out through the binding
        (``npvalue``, about 0.6 us a float) would time the binding, not the network."""
        dy.renew_cg()
        logits = self._forward(inputs, False)
        logits.forward()
        return logits

    def gradients(self, inputs: Any, labels: Any) -> Tuple[float, Dict[str, Any]]:
        batch, targets = self.device_batch(inputs), self.device_batch(labels)
        for handle in self.handles_.values():  # DyNet adds each backward pass to the gradients
            handle.scale_gradient(0.0)
        dy.renew_cg()
        loss = self._loss(self._forward(batch, False), targets)
        value = loss.value()
        loss.backward()
        found = {name: np.array(handle.grad_as_array(), dtype=np.float32) for name, handle in self.handles_.items()}
        for handle in self.handles_.values():
            handle.scale_gradient(0.0)
        return float(value), found

    def train_step(self, inputs: Any, labels: Any) -> Any:
        dy.renew_cg()
        loss = self._loss(self._forward(inputs, True), labels)
        value = loss.value()
        loss.backward()
        self.trainer.update()
        self._fold_statistics()
        return value

    def parity(self) -> Dict[str, Any]:
        return {"threads": 1, "execution": "eager",
                "details": {"memory_mb": DYNET_MEMORY_MB, "seed": DYNET_SEED, "graph": "dynamic, renewed per step",
                            "clip_threshold": None if self.trainer is None else self.trainer.get_clip_threshold()}}
