"""Theano 1.0.5: the spec's network as one symbolic graph, compiled by ``theano.function``.

As Theano's documentation of its time taught (the deeplearning.net tutorials): parameters are shared
variables, the network is a symbolic expression built layer by layer (``nnet.conv2d``,
``signal.pool.pool_2d``, ``nnet.bn``, ``scan`` for recurrent layers), the optimizer is a list of
update expressions that ``theano.function(..., updates=...)`` applies in the same compiled call as the
forward and backward pass. One graph is built per Model; each function is compiled once, on first
use, so the first step carries the compile time and timed steps never recompile.

Parameters keep the canonical layouts (Dense ``in x out``, kernels ``out x in x kh x kw``, gates
``i, f, g, o`` and ``r, z, n``), so the kernel converts nothing. Theano is configured before it is
imported (theano_setup.configure: compile directory, OpenMP); every variable and constant is made
in the Model's precision, so a float64 Model is float64 throughout although floatX is float32.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from dlarena.frameworks import kernel, theano_setup
from dlarena.frameworks.base import Parity, Unsupported
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
    pair,
)
from dlarena.spec.weights import layer_params, walk

# The recipe's optimizers as this module's update rules (``_updates``); each rule is PyTorch's
# (torch.optim's documented algorithms), the framework every other one's training is compared with.
SPELLING: kernel.OptimizerSpelling = {
    "sgd": ("sgd", {"lr": "lr", "weight_decay": "weight_decay"}),
    "sgd_momentum": ("momentum", {"lr": "lr", "momentum": "momentum", "nesterov": "nesterov",
                                  "weight_decay": "weight_decay"}),
    "adam": ("adam", {"lr": "lr", "beta1": "beta1", "beta2": "beta2", "eps": "eps", "weight_decay": "weight_decay"}),
    "adadelta": ("adadelta", {"lr": "lr", "rho": "rho", "eps": "eps", "weight_decay": "weight_decay"}),
    "rmsprop": ("rmsprop", {"lr": "lr", "rho": "rho", "eps": "eps", "weight_decay": "weight_decay"}),
}
# Seed of the dropout masks' MRG31k3p stream. The kernel gives a Model no seed; dropout masks are
# never verified (verification runs in inference mode), and a fixed stream keeps runs alike.
DROPOUT_SEED = 1234


class Model(kernel.Model):
    def __init__(self, workload: Workload, precision: str, device: str, batch_size: int, training: bool,
                 **options: Any) -> None:
        super().__init__(workload, precision, device, batch_size, training)
        import theano
        import theano.tensor as T
        from theano.sandbox.rng_mrg import MRG_RandomStreams

        self.T = T
        self.params: dict[str, Any] = {}  # canonical name -> shared variable
        self.running: dict[str, tuple[Any, Any]] = {}  # batch norm path -> (mean, var) shared variables
        self.rng = MRG_RandomStreams(seed=DROPOUT_SEED)
        network = self.network
        self.inputs = T.TensorType("int64" if network.input_kind == "tokens" else precision,
                                   (False,) * (len(network.input_shape) + 1))("inputs")
        self.labels = T.TensorType("int64", (False,) * (len(network.label_shape) + 1))("labels")
        for path, layer, shape in walk(network.layers, network.input_shape):
            for spec in layer_params(path, layer, shape):
                self.params[spec.name] = theano.shared(np.zeros(spec.shape, self.dtype), name=spec.name)
        # Inference graph (dropout off, batch norm on running statistics): logits and gradients.
        logits, _ = self._sequence(network.layers, self.inputs, "", False)
        self.logits_expr = logits
        self.loss = self._loss(logits)
        self.functions: dict[str, Any] = {}
        if training:
            name, arguments = kernel.optimizer_arguments(self.recipe.optimizer, SPELLING, "theano")
            train_logits, state_updates = self._sequence(network.layers, self.inputs, "", True)
            train_loss = self._loss(train_logits)
            params = list(self.params.values())
            grads = self._clip(T.grad(train_loss, params))
            self.train_updates = state_updates + _updates(name, params, grads, self.c, **arguments)
            self.train_loss = train_loss

    # ---- graph building --------------------------------------------------------------------------

    def c(self, value: float) -> Any:
        """A constant in the Model's precision (a Python float would become a floatX constant)."""
        return np.asarray(value, dtype=self.dtype)

    def _sequence(self, layers: tuple[Layer, ...], x: Any, prefix: str, training: bool) -> tuple[Any, list[Any]]:
        updates: list[Any] = []
        for index, layer in enumerate(layers):
            path = f"{prefix}{index}"
            if isinstance(layer, Residual):
                body, body_updates = self._sequence(layer.body, x, f"{path}.body.", training)
                short, short_updates = self._sequence(layer.shortcut, x, f"{path}.shortcut.", training)
                x, updates = body + short, updates + body_updates + short_updates
            elif isinstance(layer, Concat):
                outs = [self._sequence(branch, x, f"{path}.branches.{i}.", training)
                        for i, branch in enumerate(layer.branches)]
                x = self.T.concatenate([out for out, _ in outs], axis=1)
                updates += [update for _, branch_updates in outs for update in branch_updates]
            else:
                x, layer_updates = self._layer(layer, x, path, training)
                updates += layer_updates
        return x, updates

    def _layer(self, layer: Layer, x: Any, path: str, training: bool) -> tuple[Any, list[Any]]:
        T, p = self.T, self.params
        if isinstance(layer, Dense):
            out = T.dot(x, p[f"{path}.kernel"])
            return (out + p[f"{path}.bias"] if layer.bias else out), []
        if isinstance(layer, Conv2D):
            # filter_flip=False: the spec's convolution is a cross-correlation, as in every framework
            # but Theano, whose conv2d flips the kernel unless told not to.
            out = T.nnet.conv2d(x, p[f"{path}.kernel"], border_mode=pair(layer.padding),
                                subsample=pair(layer.stride), filter_flip=False)
            return (out + p[f"{path}.bias"].dimshuffle("x", 0, "x", "x") if layer.bias else out), []
        if isinstance(layer, MaxPool2D | AvgPool2D):
            from theano.tensor.signal.pool import pool_2d

            # average_inc_pad: padded positions count in the average (the spec's count_include_pad).
            mode = "max" if isinstance(layer, MaxPool2D) else "average_inc_pad"
            stride = layer.stride if layer.stride is not None else layer.kernel
            out = pool_2d(x, ws=pair(layer.kernel), ignore_border=True, stride=pair(stride),
                          pad=pair(layer.padding), mode=mode)
            return (self._one_max_gradient(x, out, layer, pair(stride)) if isinstance(layer, MaxPool2D) else out), []
        if isinstance(layer, GlobalAvgPool2D):
            return x.mean(axis=(2, 3)), []
        if isinstance(layer, BatchNorm):
            return self._batch_norm(layer, x, path, training)
        if isinstance(layer, Activation):
            functions = {"relu": T.nnet.relu, "sigmoid": T.nnet.sigmoid, "tanh": T.tanh}
            return functions[layer.function](x), []
        if isinstance(layer, Dropout):
            if not training or layer.rate == 0:
                return x, []
            keep = self.c(1.0 - layer.rate)
            return x * self.rng.binomial(x.shape, p=keep, dtype=self.precision) / keep, []
        if isinstance(layer, Flatten):
            return x.flatten(2), []
        if isinstance(layer, Embedding):
            return p[f"{path}.table"][x], []
        if isinstance(layer, LSTM | GRU):
            return self._recurrent(layer, x, path), []
        raise Unsupported(f"the theano module has no {type(layer).__name__} layer")

    def _one_max_gradient(self, x: Any, out: Any, layer: MaxPool2D, stride: tuple[int, int]) -> Any:
        """``out`` (pool_2d's max pool of ``x``) whose gradient goes to ONE largest input per window.

        Theano's MaxPoolGrad sends a window's gradient to every input equal to its maximum; the spec
        (and torch) to one. Exact ties are copies of one value made by the network (an overlapping
        max pool repeats its largest value in neighbouring outputs; a stride-1 pool makes plateaus),
        so Theano counts that value's gradient once per copy: measured on googlenet-small, whose
        stride-1 max pools follow overlapping ones (float64 kernel gradients off by 7.5 from torch's).
        ``picked`` is the window's first largest input in row-major order (torch's choice), by one
        switch per window position; ``out + picked - zero_grad(picked)`` has ``out``'s value (the
        optimizer cancels the two ``picked`` terms, so the forward pass is pool_2d's alone) and
        ``picked``'s gradient, through the switches, to the chosen input only."""
        from theano.gradient import zero_grad

        T = self.T
        (kh, kw), (sh, sw), (ph, pw) = pair(layer.kernel), stride, pair(layer.padding)
        if ph or pw:  # -inf padding: a padded position is never a window's largest
            padded = T.alloc(self.c(-np.inf), x.shape[0], x.shape[1], x.shape[2] + 2 * ph, x.shape[3] + 2 * pw)
            x = T.set_subtensor(padded[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]], x)
        top = zero_grad(out)
        rows, columns = out.shape[2], out.shape[3]
        found, picked = None, None
        for i in range(kh):
            for j in range(kw):
                candidate = x[:, :, i:i + sh * (rows - 1) + 1:sh, j:j + sw * (columns - 1) + 1:sw]
                hit = T.eq(candidate, top) if found is None else T.and_(T.eq(candidate, top), T.eq(found, 0))
                found = hit if found is None else T.or_(found, hit)
                term = T.switch(hit, candidate, self.c(0.0))
                picked = term if picked is None else picked + term
        return zero_grad(out) + picked - zero_grad(picked)

    def _batch_norm(self, layer: BatchNorm, x: Any, path: str, training: bool) -> tuple[Any, list[Any]]:
        # The plain formula: theano.tensor.nnet.bn refuses an epsilon below 1e-5 (cuDNN's limit),
        # compared after a cast to floatX, so it refuses 1e-5 itself.
        T = self.T
        axes = (0, 2, 3) if x.ndim == 4 else (0,)  # statistics per channel: over the batch and the image
        pattern = ("x", 0, "x", "x") if x.ndim == 4 else ("x", 0)
        gamma, beta = (self.params[f"{path}.{role}"].dimshuffle(*pattern) for role in ("gamma", "beta"))
        mean, var = self._running(path, int(self.params[f"{path}.gamma"].get_value().shape[0]))
        if not training:
            scale = gamma / T.sqrt(var.dimshuffle(*pattern) + self.c(layer.eps))
            return (x - mean.dimshuffle(*pattern)) * scale + beta, []
        batch_mean = x.mean(axis=axes, keepdims=True)
        batch_var = T.sqr(x - batch_mean).mean(axis=axes, keepdims=True)
        out = (x - batch_mean) / T.sqrt(batch_var + self.c(layer.eps)) * gamma + beta
        # The running variance takes the unbiased batch variance, as PyTorch's; momentum is the
        # weight of the new statistic (the spec's convention).
        count = T.cast(T.prod([x.shape[axis] for axis in axes]), self.precision)
        unbiased = batch_var.flatten() * count / (count - self.c(1.0))
        keep, new = self.c(1.0 - layer.momentum), self.c(layer.momentum)
        return out, [(mean, keep * mean + new * batch_mean.flatten()), (var, keep * var + new * unbiased)]

    def _running(self, path: str, channels: int) -> tuple[Any, Any]:
        """A batch norm's running (mean, variance), shared by the inference and the training graph."""
        import theano

        if path not in self.running:
            self.running[path] = (theano.shared(np.zeros(channels, self.dtype), name=f"{path}.running_mean"),
                                  theano.shared(np.ones(channels, self.dtype), name=f"{path}.running_var"))
        return self.running[path]

    def _recurrent(self, layer: LSTM | GRU, x: Any, path: str) -> Any:
        import theano

        T, p, H = self.T, self.params, layer.hidden
        sigmoid = T.nnet.sigmoid
        for k in range(layer.layers):
            name = f"{path}.layer{k}"
            w_rec = p[f"{name}.recurrent_kernel"]
            # The input projection of every time step is one product outside the loop; scan runs
            # only the recurrent product and the gates, over time-major sequences.
            bias = p[f"{name}.bias"] if isinstance(layer, LSTM) else p[f"{name}.input_bias"]
            projected = (T.dot(x, p[f"{name}.input_kernel"]) + bias).dimshuffle(1, 0, 2)
            zeros = T.zeros((x.shape[0], H), dtype=self.precision)
            if isinstance(layer, LSTM):
                def lstm_step(gates_in: Any, h: Any, c: Any, w: Any) -> tuple[Any, Any]:
                    gates = gates_in + T.dot(h, w)
                    i, f, g, o = (gates[:, n * H:(n + 1) * H] for n in range(4))
                    c = sigmoid(f) * c + sigmoid(i) * T.tanh(g)
                    return sigmoid(o) * T.tanh(c), c

                (hs, _), _ = theano.scan(lstm_step, sequences=[projected], outputs_info=[zeros, zeros],
                                         non_sequences=[w_rec], strict=True)
            else:
                def gru_step(from_input: Any, h: Any, w: Any, b: Any) -> Any:
                    from_state = T.dot(h, w) + b
                    xr, xz, xn = (from_input[:, n * H:(n + 1) * H] for n in range(3))
                    hr, hz, hn = (from_state[:, n * H:(n + 1) * H] for n in range(3))
                    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
                    # cuDNN's GRU: the reset gate multiplies the recurrent product with its bias.
                    return (self.c(1.0) - z) * T.tanh(xn + r * hn) + z * h

                hs, _ = theano.scan(gru_step, sequences=[projected], outputs_info=[zeros],
                                    non_sequences=[w_rec, p[f"{name}.recurrent_bias"]], strict=True)
            x = hs.dimshuffle(1, 0, 2)
        return x if layer.return_sequences else x[:, -1]

    def _loss(self, logits: Any) -> Any:
        T = self.T
        flat = logits.reshape((-1, self.network.classes))
        # Theano's stabilising rewrite turns softmax + categorical_crossentropy into one
        # log-sum-exp op (crossentropy_softmax_argmax_1hot_with_bias), the documented idiom.
        losses = T.nnet.categorical_crossentropy(T.nnet.softmax(flat), self.labels.flatten())
        # The divisor of a batch of symbolic size: the kernel's rule applied to inputs.shape[0].
        divisor = kernel.loss_divisor(self.network, self.recipe, self.inputs.shape[0])
        return losses.sum() / T.cast(divisor, self.precision)

    def _clip(self, grads: list[Any]) -> list[Any]:
        clip = self.recipe.grad_clip_norm
        if clip is None:
            return grads
        T = self.T
        norm = T.sqrt(sum(T.sum(T.sqr(g)) for g in grads))
        scale = T.switch(norm > self.c(clip), self.c(clip) / norm, self.c(1.0))  # kernel.clip_scale's rule
        return [g * scale for g in grads]

    # ---- compiled functions ----------------------------------------------------------------------

    def _function(self, key: str) -> Any:
        if key not in self.functions:
            import theano

            x, y = self.inputs, self.labels
            if key == "logits":
                self.functions[key] = theano.function([x], self.logits_expr, name="logits")
            elif key == "gradients":
                grads = self.T.grad(self.loss, list(self.params.values()))
                self.functions[key] = theano.function([x, y], [self.loss, *grads], name="gradients")
            else:
                self.functions[key] = theano.function([x, y], self.train_loss, updates=OrderedDict(self.train_updates),
                                                      name="train")
        return self.functions[key]

    def bindings(self) -> list[kernel.Binding]:
        return self.bind(self.params)

    def read(self, handle: Any) -> np.ndarray:
        return np.asarray(handle.get_value())

    def write(self, handle: Any, value: np.ndarray) -> None:
        handle.set_value(np.asarray(value, dtype=self.dtype))

    def device_batch(self, array: np.ndarray) -> Any:
        return array.astype(np.int64) if array.dtype.kind in "iu" else array.astype(self.dtype)

    def logits(self, inputs: Any) -> np.ndarray:
        return np.asarray(self._function("logits")(inputs))

    def gradients(self, inputs: Any, labels: Any) -> tuple[float, dict[str, np.ndarray]]:
        loss, *grads = self._function("gradients")(inputs, labels)
        return float(loss), dict(zip(self.params, grads, strict=True))

    def train_step(self, inputs: Any, labels: Any) -> Any:
        return self._function("train")(inputs, labels)

    def reset_statistics(self) -> None:
        for mean, var in self.running.values():
            mean.set_value(np.zeros_like(mean.get_value()))
            var.set_value(np.ones_like(var.get_value()))

    def parity(self) -> Parity:
        threads, source = theano_setup.blas_threads()
        details = {"threads_source": source, **theano_setup.config_record(),
                   "compiled_functions": sorted(self.functions)}
        return Parity(threads=threads, execution="graph", details=details)


def _updates(name: str, params: list[Any], grads: list[Any], c: Any, lr: float, weight_decay: float = 0.0,
             momentum: float = 0.0, nesterov: bool = False, beta1: float = 0.9, beta2: float = 0.999,
             rho: float = 0.9, eps: float = 1e-8) -> list[tuple[Any, Any]]:
    """The optimizer as Theano update pairs (shared variable, new value): torch.optim's algorithms,
    weight decay added to the gradient (L2, as torch.optim)."""
    import theano
    import theano.tensor as T

    def slot(param: Any, fill: float = 0.0) -> Any:
        value = param.get_value(borrow=True)
        return theano.shared(np.full(value.shape, fill, value.dtype), name=f"{param.name}.{name}")

    updates: list[tuple[Any, Any]] = []
    step = None
    if name == "adam":
        step = theano.shared(np.asarray(0.0, params[0].dtype), name="adam.step")
        updates.append((step, step + c(1.0)))
    for param, grad in zip(params, grads, strict=True):
        if weight_decay:
            grad = grad + c(weight_decay) * param
        if name == "sgd":
            updates.append((param, param - c(lr) * grad))
        elif name == "momentum":
            velocity = slot(param)
            new_velocity = c(momentum) * velocity + grad
            direction = grad + c(momentum) * new_velocity if nesterov else new_velocity
            updates += [(velocity, new_velocity), (param, param - c(lr) * direction)]
        elif name == "adam":
            m, v, t = slot(param), slot(param), step + c(1.0)
            new_m = c(beta1) * m + c(1.0 - beta1) * grad
            new_v = c(beta2) * v + c(1.0 - beta2) * T.sqr(grad)
            denom = T.sqrt(new_v) / T.sqrt(c(1.0) - c(beta2) ** t) + c(eps)
            updates += [(m, new_m), (v, new_v),
                        (param, param - c(lr) / (c(1.0) - c(beta1) ** t) * new_m / denom)]
        elif name == "rmsprop":
            square = slot(param)
            new_square = c(rho) * square + c(1.0 - rho) * T.sqr(grad)
            updates += [(square, new_square), (param, param - c(lr) * grad / (T.sqrt(new_square) + c(eps)))]
        else:  # adadelta
            square, delta_square = slot(param), slot(param)
            new_square = c(rho) * square + c(1.0 - rho) * T.sqr(grad)
            delta = T.sqrt(delta_square + c(eps)) / T.sqrt(new_square + c(eps)) * grad
            updates += [(square, new_square), (delta_square, c(rho) * delta_square + c(1.0 - rho) * T.sqr(delta)),
                        (param, param - c(lr) * delta)]
    return updates


class Backend(kernel.KernelBackend):
    name = "theano"
    model_class = Model

    def __init__(self, threads: int, **options: Any) -> None:
        super().__init__(threads, **options)
        self.settings = theano_setup.configure(threads)  # before Theano is imported
        theano_setup.require_compiler()
        import theano  # noqa: F401  (imported here, after configure, so that the flags take effect)

    def version(self) -> str:
        return theano_setup.theano_version()

    def flush_denormals(self) -> str:
        return theano_setup.flush_denormals()

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        import theano
        import theano.tensor as T

        self._device(device)
        left, right = T.matrix("a", dtype=str(a.dtype)), T.matrix("b", dtype=str(b.dtype))
        return np.asarray(theano.function([left, right], T.dot(left, right))(a, b))

