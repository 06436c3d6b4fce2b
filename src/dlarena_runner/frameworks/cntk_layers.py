"""CNTK 2.7 (``cntk``): the network in ``cntk.layers``, stepped by ``cntk.Trainer.train_minibatch``
with a ``cntk.learners`` learner, as CNTK's own tutorials and the published comparisons' CNTK scripts do.

Runs in the ``cntk`` environment (Python 3.6, NumPy 1.19) under ``dlarena_runner.job_worker``.

Choices, each because the spec asks for it:

* Images are channels-first, CNTK's own layout; CNTK's parameters are already canonical: dense
  ``W (in, out)``, convolution ``W (out, in, kh, kw)`` (a cross-correlation), LSTM ``W (in, 4H)``,
  ``H (H, 4H)``, one bias ``b (4H)``, but its gate blocks are ``i, g, f, o`` (``cntk.layers.LSTM``).
  Convolution biases are ``(out, 1, 1)``: ``read``/``write`` reshape to and from ``(out,)``.
* A convolution pads with ``pad=True`` only where CNTK's automatic padding is the spec's (stride 1,
  ``k = 2p + 1``); otherwise ``cntk.pad`` pads explicitly, with zeros (convolution, average pool: the
  zeros count in the average) or minus infinity (max pool: a padded position never wins).
* The loss is ``cross_entropy_with_softmax`` per sample (per token for a language model); the Trainer
  sums it over the minibatch, and the learning rate is declared for a minibatch of ``loss_divisor``
  samples (``learning_parameter_schedule(lr, minibatch_size=loss_divisor)``), so that CNTK applies
  ``lr / loss_divisor`` to the summed gradient: the recipe's step on the recipe's mean loss. Momentum
  is declared per minibatch of the samples one step really has, and without CNTK's default
  unit gain (``unit_gain=False``: ``v = m v + g``, as the recipe means momentum).
* A recurrent network's first input axis is CNTK's sequence axis (``cntk.sequence.input_variable``);
  tokens come as float ids, and an embedding is ``cntk.gather`` of its table's rows (what Keras' CNTK
  backend does). ``cntk.layers.Embedding`` takes sparse one-hot vectors instead, and then the
  table's gradient is a sparse matrix that CNTK's CPU Adam does not implement, its Nesterov step
  updates differently, no element-wise op (a global norm) accepts, and ``Function.grad`` cannot
  return as NumPy (each measured).
* CNTK's batch-normalisation op back-propagates only as in training (measured: in inference mode the
  gradient of its scale came out near zero), so ``gradients`` runs a second graph over the same
  parameters in which inference batch norm is its formula over the running statistics, and dropout
  is left out (it is the identity in inference). ``logits`` runs CNTK's own op.
* Batch norm's running averages are kept by CNTK over a time constant in samples:
  ``-batch / ln(1 - momentum)`` gives the spec's weight ``momentum`` to each new batch.
* Global-norm gradient clipping has no CNTK learner setting (its clipping is per sample and per
  parameter): with ``grad_clip_norm`` a step runs forward and backward itself, scales the gradients
  in NumPy, and hands them to the same learner's ``update``.
"""

import glob
import math
import os
import warnings
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import numpy as np

from dlarena_runner.model import Layer, Unsupported
from dlarena_runner.model import Model as BaseModel

with warnings.catch_warnings():
    # At import CNTK warns that Debian is not Ubuntu and that the GPU libraries are missing: both true,
    # neither matters to its CPU build.
    warnings.simplefilter("ignore")
    import cntk as C

C.device.try_set_default_device(C.device.cpu())

_ACTIVATIONS = {"relu": C.relu, "sigmoid": C.sigmoid, "tanh": C.tanh}
_LAYERS = ("Dense", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "BatchNorm", "Activation", "Dropout",
           "Flatten", "Embedding", "LSTM", "Residual", "Concat")
# The recipe's fields each learner honours; any other one must stay at the recipe's default.
_DEFAULTS = {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999, "rho": 0.9,
             "eps": 1e-8}
_HONOURED = {"sgd": ("momentum", "nesterov"), "adam": ("beta1", "beta2", "eps"), "adadelta": ("rho", "eps")}


def version() -> str:
    """The wheel's version (2.7.post2): ``cntk.__version__`` says 2.7, and so does the name of the
    wheel's dist-info folder; its METADATA file has the full one."""
    site = os.path.dirname(os.path.dirname(C.__file__))
    for path in glob.glob(os.path.join(site, "cntk-*.dist-info", "METADATA")):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    return str(C.__version__)


def set_threads(threads: int) -> Optional[int]:
    C.cntk_py.set_max_num_cputhreads(threads)
    return int(C.cntk_py.get_max_num_cputhreads())


def denormal_product(a: Any, b: Any) -> Any:
    """``a @ b`` by ``cntk.times`` on CPU, as the steps multiply."""
    with C.default_options(dtype=a.dtype):
        left = C.input_variable(a.shape[1:])
        return np.asarray(C.times(left, C.constant(b)).eval({left: a}))


def _dtype(precision: str) -> Any:
    return np.float64 if precision == "float64" else np.float32


class _Builder:
    """The spec's layers as ``cntk.layers``; each layer object is made once and applied to each graph
    (CNTK shares a layer's parameters between its applications)."""

    def __init__(self, dtype: Any, batch_size: int) -> None:
        self.dtype, self.batch_size = dtype, batch_size
        self.objects: Dict[str, Any] = {}
        self.handles: Dict[str, Tuple[Any, Tuple[int, ...]]] = {}  # canonical name -> (parameter, canonical shape)
        self.norms: List[Any] = []

    def _object(self, path: str, make: Any) -> Any:
        if path not in self.objects:
            self.objects[path] = make()
        return self.objects[path]

    def _bind(self, layer: Layer, parameters: List[Any]) -> None:
        for param, parameter in zip(layer.params, parameters):
            self.handles[param.name] = (parameter, tuple(param.shape))

    def sequence(self, layers: List[Layer], x: Any, checker: bool) -> Any:
        index = 0
        while index < len(layers):
            layer = layers[index]
            follower = layers[index + 1] if index + 1 < len(layers) else None
            # CNTK's idiom: the activation is the Dense or Convolution layer's own.
            fold = layer.type in ("Dense", "Conv2D") and follower is not None and follower.type == "Activation"
            activation = _ACTIVATIONS[follower.function] if fold and follower is not None else None
            x = self.layer(layer, x, activation, checker)
            index += 2 if fold else 1
        return x

    def layer(self, layer: Layer, x: Any, activation: Any, checker: bool) -> Any:
        kind = layer.type
        identity = C.layers.identity
        if kind == "Dense":
            dense = self._object(layer.path, lambda: C.layers.Dense(
                layer.units, activation=activation or identity, init=0, bias=layer.bias, init_bias=0,
                input_rank=1, name="dense" + layer.path))
            self._bind(layer, [dense.W, dense.b] if layer.bias else [dense.W])
            return dense(x)
        if kind == "Conv2D":
            (kh, kw), stride, (ph, pw) = layer.kernel, tuple(layer.stride), layer.padding
            auto = stride == (1, 1) and kh == 2 * ph + 1 and kw == 2 * pw + 1
            if not auto and (ph or pw):
                x = C.pad(x, [(0, 0), (ph, ph), (pw, pw)])
            conv = self._object(layer.path, lambda: C.layers.Convolution2D(
                (kh, kw), layer.filters, activation=activation or identity, init=0, pad=auto, strides=stride,
                bias=layer.bias, init_bias=0, name="conv" + layer.path))
            self._bind(layer, [conv.W, conv.b] if layer.bias else [conv.W])
            return conv(x)
        if kind in ("MaxPool2D", "AvgPool2D"):
            (ph, pw), maximum = layer.padding, kind == "MaxPool2D"
            if ph or pw:
                x = C.pad(x, [(0, 0), (ph, ph), (pw, pw)], constant_value=-np.inf if maximum else 0.0)
            pool = C.layers.MaxPooling if maximum else C.layers.AveragePooling
            return pool(tuple(layer.kernel), strides=tuple(layer.stride), pad=False)(x)
        if kind == "GlobalAvgPool2D":
            return C.reshape(C.layers.GlobalAveragePooling()(x), (layer.output_shape[0],))
        if kind == "BatchNorm":
            return self._batch_norm(layer, x, checker)
        if kind == "Activation":
            return _ACTIVATIONS[layer.function](x)
        if kind == "Dropout":
            return x if checker or not layer.rate else C.layers.Dropout(layer.rate)(x)
        if kind == "Flatten":
            return C.reshape(x, (int(np.prod(layer.output_shape)),))
        if kind == "Embedding":  # x: token ids as floats
            table = self._object(layer.path, lambda: C.parameter((layer.vocab, layer.dim), init=0, dtype=self.dtype,
                                                                 name="E"))
            self._bind(layer, [table])
            return C.gather(table, x)
        if kind == "LSTM":
            for k in range(layer.layers):
                cell = self._object(f"{layer.path}.layer{k}", lambda: C.layers.LSTM(
                    layer.hidden, init=0, init_bias=0))
                names = [f"{layer.path}.layer{k}.{role}" for role in ("input_kernel", "recurrent_kernel",
                                                                                    "bias")]
                for name, parameter in zip(names, [cell.W, cell.H, cell.b]):
                    self.handles[name] = (parameter, tuple(parameter.shape))
                x = C.layers.Recurrence(cell)(x)
            return x if layer.return_sequences else C.sequence.last(x)
        if kind == "Residual":
            body = self.sequence(layer.body, x, checker)
            return C.plus(body, self.sequence(layer.shortcut, x, checker) if layer.shortcut else x)
        if kind == "Concat":
            return C.splice(*[self.sequence(branch, x, checker) for branch in layer.branches], axis=0)
        raise Unsupported(f"the cntk module has no mapping for the layer type {kind}")

    def _batch_norm(self, layer: Layer, x: Any, checker: bool) -> Any:
        if self.batch_size and layer.momentum > 0:
            time_constant = -self.batch_size / math.log(1.0 - layer.momentum)
        else:
            time_constant = 0  # verification: no running average is ever updated
        norm = self._object(layer.path, lambda: C.layers.BatchNormalization(
            map_rank=1, init_scale=1, normalization_time_constant=time_constant, epsilon=layer.eps))
        if norm not in self.norms:
            self.norms.append(norm)
        self._bind(layer, [norm.scale, norm.bias])
        if not checker:
            return norm(x)
        channels = layer.input_shape[0]
        shape = (channels,) + (1,) * (len(layer.input_shape) - 1)  # broadcast over H and W

        def per_channel(value: Any) -> Any:
            return C.reshape(value, shape)

        centred = x - per_channel(norm.aggregate_mean)
        scaled = centred / C.sqrt(per_channel(norm.aggregate_variance) + layer.eps)
        return scaled * per_channel(norm.scale) + per_channel(norm.bias)


class Model(BaseModel):
    # CNTK's own layouts are the canonical ones except the LSTM's gate blocks (i, g, f, o).
    conventions: ClassVar[Dict[str, str]] = {"lstm_gates": "igfo"}

    def __init__(self, network: Any, recipe: Dict[str, Any], precision: str, batch_size: int, training: bool,
                 loss_divisor: int) -> None:
        super().__init__(network, recipe, precision, batch_size, training, loss_divisor)
        for layer in network.leaves():
            if layer.type not in _LAYERS:
                raise Unsupported("cntk runs {}, not {}".format(", ".join(_LAYERS), layer.type))
        dtype = _dtype(precision)
        self.recurrent = any(layer.type == "LSTM" for layer in network.leaves())
        self.tokens = network.input_kind == "tokens"
        if self.tokens and not self.recurrent:
            raise Unsupported("cntk maps token inputs onto its sequence axis, which needs a recurrent layer")
        with C.default_options(dtype=dtype):  # the layers' parameters in the model's precision
            if self.recurrent:  # the first axis is CNTK's sequence axis (a token is a scalar id)
                self.x = C.sequence.input_variable(() if self.tokens else network.input_shape[1:])
            else:
                self.x = C.input_variable(network.input_shape)
            token_labels = network.label_kind == "token"
            self.y = C.sequence.input_variable(()) if token_labels else C.input_variable(())
            builder = _Builder(dtype, batch_size)
            self.z = builder.sequence(network.layers, self.x, checker=False)
            self.handles_, self.norms = builder.handles, builder.norms
            self.checker_z = builder.sequence(network.layers, self.x, checker=True)
            target = C.one_hot(self.y, network.classes)
        self.checker_loss = C.cross_entropy_with_softmax(self.checker_z, target) / loss_divisor
        self.parameters = [self.handles_[name][0] for name in sorted(self.handles_)]
        self.trainer: Any = None
        if training:
            self.samples = max(batch_size, 1) * int(np.prod(network.input_shape[:1] if token_labels else ()))
            self.loss = C.cross_entropy_with_softmax(self.z, target)  # per sample: the Trainer sums it
            self.learner = self._learner()
            self.trainer = C.Trainer(self.z, (self.loss, None), [self.learner])

    def _learner(self) -> Any:
        optimizer = dict(self.recipe["optimizer"])
        name = optimizer["name"]
        if name not in _HONOURED:
            raise Unsupported("cntk's {} learner is not the recipe's update rule; cntk runs the recipe's "
                              "{}".format(name, ", ".join(sorted(_HONOURED))))
        for field, default in sorted(_DEFAULTS.items()):
            if field not in _HONOURED[name] and field != "weight_decay" and optimizer.get(field, default) != default:
                raise Unsupported(f"cntk's {name} learner has no {field} setting, and the recipe sets it to "
                                  f"{optimizer[field]}")
        if optimizer.get("weight_decay") and self.network.label_kind == "token":
            raise Unsupported("cntk's L2 weight is per sample, and a language model's samples are its tokens: "
                              "the recipe's weight decay is not expressible per step there")
        # L2 regularisation is per sample: CNTK adds weight * samples * w to the summed gradient, which
        # the learning rate then divides by loss_divisor, the same count here (measured: exact).
        extra = {"l2_regularization_weight": optimizer.get("weight_decay", 0.0)}
        params = self.parameters
        if name == "sgd":
            # The learning rate is declared for a minibatch of loss_divisor samples: CNTK applies
            # lr / loss_divisor to the summed gradient; momentum per the samples a step has: as given.
            lr = C.learning_parameter_schedule(optimizer["lr"], minibatch_size=self.loss_divisor)
            momenta = {"minibatch_size": self.samples}
            momentum = optimizer.get("momentum", 0.0)
            if optimizer.get("nesterov") and not momentum:
                raise Unsupported("Nesterov momentum needs a momentum; the recipe sets none")
            if self.recipe.get("grad_clip_norm") is not None:
                return C.universal(lambda parameters, gradients: self._clipped_sgd(parameters, gradients), params)
            if not momentum:
                return C.sgd(params, lr, **extra)
            learner = C.nesterov if optimizer.get("nesterov") else C.momentum_sgd
            return learner(params, lr, C.momentum_schedule(momentum, **momenta), unit_gain=False, **extra)
        if self.recipe.get("grad_clip_norm") is not None:
            raise Unsupported("cntk's learners clip per sample and per parameter; the recipe's global-norm "
                              "clipping is written for SGD only")
        # Adam and Adadelta with the learner's minibatch_size IGNORE divide the summed gradient by the
        # minibatch's samples (measured), which must then be the loss divisor: the recipe's mean.
        if self.samples != self.loss_divisor:
            raise Unsupported(f"cntk's {name} steps on the gradient's mean over the minibatch's {self.samples} "
                              f"samples, and the recipe divides its loss by {self.loss_divisor}")
        ignore = {"minibatch_size": C.learners.IGNORE}
        if name == "adam":
            # CNTK's Adam adds eps to sqrt(v) after bias correction's factor moved into the step size
            # (Keras' and TensorFlow 1's Adam; PyTorch adds it to the bias-corrected sqrt).
            return C.adam(params, optimizer["lr"], optimizer["beta1"], unit_gain=True,
                          variance_momentum=optimizer["beta2"], epsilon=optimizer["eps"], **ignore, **extra)
        return C.adadelta(params, optimizer["lr"], rho=optimizer["rho"], epsilon=optimizer["eps"], **ignore, **extra)

    def _clipped_sgd(self, parameters: List[Any], gradients: List[Any]) -> Any:
        """SGD (with momentum, Nesterov's or not) after global-norm clipping, as a CNTK function for
        ``cntk.universal``: the gradients come summed over the minibatch; the norm is of their mean."""
        optimizer = self.recipe["optimizer"]
        lr, momentum, clip = optimizer["lr"], optimizer.get("momentum", 0.0), float(self.recipe["grad_clip_norm"])
        means = [gradient / self.loss_divisor for gradient in gradients]
        squares = [C.reduce_sum(C.reshape(C.square(mean), (-1,)), axis=0) for mean in means]
        norm = C.sqrt(squares[0] if len(squares) == 1 else C.plus(*squares))
        factor = C.element_select(C.greater(norm, clip), clip / norm, C.constant(1.0, (1,), dtype=norm.dtype))
        updates = []
        for parameter, mean in zip(parameters, means):
            step = mean * C.reshape(factor, (1,) * len(parameter.shape))
            if optimizer.get("weight_decay"):
                step = step + optimizer["weight_decay"] * parameter
            if momentum:
                velocity = C.constant(0.0, parameter.shape, dtype=parameter.dtype)
                new_velocity = C.assign(velocity, momentum * velocity + step)
                step = step + momentum * new_velocity if optimizer.get("nesterov") else new_velocity
            updates.append(C.assign(parameter, parameter - lr * step))
        return C.combine(updates)

    # Parameters ---------------------------------------------------------------------------------

    def handles(self) -> Dict[str, Any]:
        return dict(self.handles_)

    def read(self, handle: Any) -> Any:
        parameter, shape = handle
        return np.asarray(parameter.value).reshape(shape)

    def write(self, handle: Any, value: Any) -> None:
        parameter, _ = handle
        parameter.value = np.ascontiguousarray(value, dtype=_dtype(self.precision)).reshape(parameter.shape)

    def reset_statistics(self) -> None:
        dtype = _dtype(self.precision)
        for norm in self.norms:
            norm.aggregate_mean.value = np.zeros(norm.aggregate_mean.shape, dtype)
            norm.aggregate_variance.value = np.ones(norm.aggregate_variance.shape, dtype)
            norm.aggregate_count.value = np.zeros(norm.aggregate_count.shape, dtype)

    # Batches and steps --------------------------------------------------------------------------

    def device_batch(self, array: Any) -> Any:
        """Token ids and class ids as floats in the model's precision (CNTK's inputs are floating
        point; ids below 2**24 are exact in float32); images and vectors as they are."""
        if array.dtype.kind in "iu":
            return np.ascontiguousarray(array, dtype=_dtype(self.precision))
        return array

    def _prepare(self, array: Any) -> Any:
        return array if array.dtype == _dtype(self.precision) else np.asarray(array, dtype=_dtype(self.precision))

    def logits(self, inputs: Any) -> Any:
        return np.asarray(self.z.eval({self.x: self._prepare(inputs)}))

    def infer_step(self, inputs: Any) -> Any:
        return self.z.eval({self.x: inputs})

    def gradients(self, inputs: Any, labels: Any) -> Tuple[float, Dict[str, Any]]:
        arguments = {self.x: self._prepare(inputs), self.y: self._prepare(labels)}
        found, losses = self.checker_loss.grad(arguments, wrt=self.parameters, outputs=[self.checker_loss])
        loss = float(sum(np.sum(value) for value in losses)) if isinstance(losses, list) else float(np.sum(losses))
        names = {id(parameter): name for name, (parameter, _) in self.handles_.items()}
        return loss, {names[id(parameter)]: np.asarray(value).reshape(self.handles_[names[id(parameter)]][1])
                      for parameter, value in found.items()}

    def train_step(self, inputs: Any, labels: Any) -> Any:
        self.trainer.train_minibatch({self.x: inputs, self.y: labels})
        total = self.trainer.previous_minibatch_loss_average * self.trainer.previous_minibatch_sample_count
        return total / self.loss_divisor

    def trainable_params(self) -> int:
        return int(sum(np.prod(parameter.shape) for parameter in self.z.parameters))

    def parity(self) -> Dict[str, Any]:
        return {"threads": int(C.cntk_py.get_max_num_cputhreads()), "execution": "graph",
                "details": {"device": str(C.device.use_default_device().type()),
                            "kmp_blocktime": os.environ.get("KMP_BLOCKTIME")}}
