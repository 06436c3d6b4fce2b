"""Caffe2 as torch 1.10.2 carries it (Karmanov's "Caffe2"): ``model_helper.ModelHelper``, ``brew``,
``caffe2.python.optimizer``, nets created once and run by name with ``workspace.RunNet``.

Every net shares one workspace, so the parameters are one set of blobs:

- ``infer``: the forward pass in test mode (``SpatialBN`` ``is_test``, no dropout); the timed infer step
  and ``logits``.
- ``grad`` (one per batch size, built at the first ``gradients`` call): the same forward pass, the
  loss and ``AddGradientOperators``. Batch norm is written out there as its affine map on the running
  statistics, because the gradient Caffe2 derives for a test-mode ``SpatialBN`` is its training-mode
  gradient (the batch terms), computed with the running statistics in place of the batch's (measured:
  wrong by 2.4 in dx on a random 4x3x5x5 batch).
- ``train``: the forward pass in training mode, the loss, ``AddGradientOperators`` and the recipe's
  ``optimizer.build_*``; the timed train step.

Caffe2's CPU operators have float32 kernels only (FC, Conv, Relu, SpatialBN, SoftmaxWithLoss,
LSTMUnit refuse float64), so float64 is unsupported. Its MaxPool gradient goes to every input equal
to the window's maximum (PyTorch's to one): where a stride-1 pool repeats an earlier pool's values
(GoogLeNet's inception pool branch) a tied maximum gets the gradient twice; verify reports that
pair as "not defined to float32 rounding". Python 3.6 syntax (the contract of ``dlarena_runner``),
though the environment is Python 3.9.
"""

from typing import Any, ClassVar, Dict, List, Optional, Tuple

import numpy as np
from caffe2.python import brew, build, core, gru_cell, model_helper, optimizer, recurrent, rnn_cell, workspace
from caffe2.python.modeling import initializers
from caffe2.python.modeling.parameter_info import ParameterTags

from dlarena_runner.model import Layer, Unsupported
from dlarena_runner.model import Model as BaseModel

# Caffe2 logs every net it creates at INFO (level 0); 2 keeps warnings and errors. Its CPU kernels
# run on OpenMP and MKL, whose thread counts its own flags set (init_omp.cc, applied by GlobalInit).
_LOG_LEVEL = 2
_INPUT, _LABEL = "data", "label"
# brew has relu and tanh helpers, no sigmoid: that one is the operator itself.
_ACTIVATIONS = {"relu": brew.relu, "tanh": brew.tanh,
                "sigmoid": lambda model, blob, name: model.net.Sigmoid(blob, name)}
# The cell's thread count (set_threads): also the size of the recurrent ops' step-net thread pool,
# which is not OpenMP's (ThreadedRecurrentNetworkExecutor; measured: 9 OS threads, several busy,
# at OMP_NUM_THREADS=1 without it).
_THREADS = {"count": 0}
_RECURRENT_OPS = ("RecurrentNetwork", "RecurrentNetworkGradient")
_ADAM_ITER_INPUT = 5  # the Adam operator's inputs: param, moment_1, moment_2, grad, lr, iter


def version() -> str:
    return str(build.build_options["TORCH_VERSION"])


def set_threads(threads: int) -> Optional[int]:
    """Caffe2's own switches: the OpenMP and MKL thread counts of its CPU kernels. Caffe2 cannot
    report the count back (no getter in caffe2.python), so this is the count its flags were given,
    which the per-thread CPU times showed it obeys (one busy thread at 1); cores_used measures it."""
    _THREADS["count"] = threads
    workspace.GlobalInit(["caffe2", f"--caffe2_log_level={_LOG_LEVEL}",
                          f"--caffe2_omp_num_threads={threads}",
                          f"--caffe2_mkl_num_threads={threads}"])
    return threads


def denormal_product(a: Any, b: Any) -> Any:
    """``a @ b`` by Caffe2's MatMul operator (MKL's sgemm, as FC runs)."""
    workspace.FeedBlob("denormal_a", np.ascontiguousarray(a, dtype=np.float32))
    workspace.FeedBlob("denormal_b", np.ascontiguousarray(b, dtype=np.float32))
    workspace.RunOperatorOnce(core.CreateOperator("MatMul", ["denormal_a", "denormal_b"], ["denormal_c"]))
    return workspace.FetchBlob("denormal_c")


def _blob(path: str) -> str:
    """A layer's blob name: ``l5_body_0`` for path ``5.body.0`` (Caffe2 scopes names with ``/``)."""
    return "l" + path.replace(".", "_")


class _Builder:
    """The spec's layers as brew calls on one ModelHelper, in one mode: infer, grad or train."""

    def __init__(self, model: Any, mode: str, batch: int) -> None:
        self.model, self.mode, self.batch = model, mode, batch
        self.handles: Dict[str, Any] = {}  # canonical name -> blob name, or a tuple of blobs (GRU)
        self.frozen: List[str] = []  # parameters brew makes that the spec does not have (kept at zero)
        self.constants: Dict[str, Any] = {}  # blob -> value, fed before the net is created
        self.states: Dict[str, Tuple[int, ...]] = {}  # recurrent initial states: blob -> shape (zeros)
        self.embeddings: List[Tuple[str, str]] = []  # (table, flat token blob): dense gradients
        self.output: Any = None  # the logits (infer) or the loss (grad, train)
        self.gradients: Dict[str, Any] = {}  # canonical name -> gradient blob(s) (grad, train)

    def sequence(self, layers: List[Layer], blob: Any) -> Any:
        for layer in layers:
            blob = self.layer(layer, blob)
        return blob

    def layer(self, layer: Layer, blob: Any) -> Any:
        model, name, kind = self.model, _blob(layer.path), layer.type
        test = self.mode != "train"
        if kind == "Dense":
            axis = len(layer.input_shape)  # FC flattens from this axis on: 1 for vectors, 2 for sequences
            dim_in = layer.input_shape[-1]
            if layer.bias:
                out = brew.fc(model, blob, name, dim_in=dim_in, dim_out=layer.units, axis=axis)
                self._bind(layer, {"kernel": name + "_w", "bias": name + "_b"})
                return out
            weight = model.create_param(param_name=name + "_w", shape=[layer.units, dim_in],
                                        initializer=self._initializer("XavierFill"), tags=ParameterTags.WEIGHT)
            zero = name + "_zero_b"  # not a parameter: FC takes a bias, the spec's layer has none
            self.constants[zero] = np.zeros(layer.units, np.float32)
            self._bind(layer, {"kernel": str(weight)})
            return model.net.FC([blob, weight, zero], name, axis=axis)
        if kind == "Conv2D":
            (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
            out = brew.conv(model, blob, name, dim_in=layer.input_shape[0], dim_out=layer.filters, kernel=[kh, kw],
                            stride_h=sh, stride_w=sw, pad_t=ph, pad_b=ph, pad_l=pw, pad_r=pw,
                            no_bias=not layer.bias)
            self._bind(layer, dict({"kernel": name + "_w"}, **({"bias": name + "_b"} if layer.bias else {})))
            return out
        if kind in ("MaxPool2D", "AvgPool2D"):
            (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
            window = dict(kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, pad_t=ph, pad_b=ph, pad_l=pw, pad_r=pw)
            if kind == "MaxPool2D":
                return brew.max_pool(model, blob, name, **window)
            # The spec's average counts padded zeros; Caffe2's AveragePool leaves them out unless asked.
            return brew.average_pool(model, blob, name, count_include_pad=1, **window)
        if kind == "GlobalAvgPool2D":
            pooled = brew.average_pool(model, blob, name + "_pool", global_pooling=True)
            return model.net.Squeeze(pooled, name, dims=[2, 3])
        if kind == "BatchNorm":
            return self._batch_norm(layer, blob, name)
        if kind == "Activation":
            return _ACTIVATIONS[layer.function](model, blob, name)
        if kind == "Dropout":
            if test or layer.rate == 0.0:
                return blob  # inference: the identity (Caffe2's is_test Dropout would copy the blob)
            return brew.dropout(model, blob, name, ratio=layer.rate, is_test=False)
        if kind == "Flatten":
            return model.net.Flatten(blob, name)
        if kind == "Embedding":
            table = model.create_param(param_name=name + "_table", shape=[layer.vocab, layer.dim],
                                       initializer=self._initializer("GaussianFill"), tags=ParameterTags.WEIGHT)
            self._bind(layer, {"table": str(table)})
            # Gathered by a flat index blob, so that the gradient's indices are one-dimensional
            # (SparseToDense, in _dense_embedding_gradients, takes them so).
            flat, _ = model.net.Reshape(blob, [name + "_ids", name + "_ids_shape"], shape=[-1])
            rows = model.net.Gather([table, flat], name + "_rows")
            self.embeddings.append((str(table), str(flat)))
            out, _ = model.net.Reshape(rows, [name, name + "_shape"], shape=[-1, layer.input_shape[0], layer.dim])
            return out
        if kind in ("LSTM", "GRU"):
            return self._recurrent(layer, blob, name)
        if kind == "Residual":
            body = self.sequence(layer.body, blob)
            shortcut = self.sequence(layer.shortcut, blob) if layer.shortcut else blob
            return brew.sum(model, [body, shortcut], name)
        if kind == "Concat":
            outs = [self.sequence(branch, blob) for branch in layer.branches]
            return brew.concat(model, outs, name, axis=1)
        raise Unsupported(f"the caffe2 module has no translation for the layer type {kind}")

    def _initializer(self, fill: str) -> Any:
        # Starting values are always written by load_weights; these only make the blobs.
        return initializers.Initializer(fill) if self.model.init_params else initializers.ExternalInitializer()

    def _bind(self, layer: Layer, blobs: Dict[str, Any]) -> None:
        for param in layer.params:
            self.handles[param.name] = blobs[param.name.rsplit(".", 1)[1]]

    def _batch_norm(self, layer: Layer, blob: Any, name: str) -> Any:
        channels = layer.input_shape[0]
        self._bind(layer, {"gamma": name + "_s", "beta": name + "_b"})
        if self.mode != "grad":
            # Caffe2's momentum weighs the running value, the spec's (PyTorch's) the batch statistic.
            return brew.spatial_bn(self.model, blob, name, channels, epsilon=layer.eps, momentum=1.0 - layer.momentum,
                                   is_test=self.mode == "infer", order="NCHW")
        # The gradient net: y = (x - mean) * gamma / sqrt(var + eps) + beta on the running statistics,
        # as operators Caffe2 differentiates exactly (see the module's docstring).
        model, net = self.model, self.model.net
        scale = model.create_param(param_name=name + "_s", shape=[channels],
                                   initializer=self._initializer("ConstantFill"), tags=ParameterTags.WEIGHT)
        shift = model.create_param(param_name=name + "_b", shape=[channels],
                                   initializer=self._initializer("ConstantFill"), tags=ParameterTags.BIAS)
        epsilon = name + "_eps"
        self.constants[epsilon] = np.array([layer.eps], np.float32)
        deviation = net.Sqrt(net.Add([name + "_riv", epsilon], name + "_var_eps", broadcast=1), name + "_std")
        factor = net.Div([scale, deviation], name + "_factor")
        centred = net.Sub([blob, name + "_rm"], name + "_centred", broadcast=1, axis=1)
        scaled = net.Mul([centred, factor], name + "_scaled", broadcast=1, axis=1)
        return net.Add([scaled, shift], name, broadcast=1, axis=1)

    def _recurrent(self, layer: Layer, blob: Any, name: str) -> Any:
        """rnn_cell.LSTM or gru_cell.GRU (cuDNN's form: ``linear_before_reset``) over a time-major copy."""
        model, hidden = self.model, layer.hidden
        lstm = layer.type == "LSTM"
        if not lstm and layer.layers != 1:
            # rnn_cell's stacking helper indexes four outputs per layer (LSTM's); a GRU layer has two.
            raise Unsupported(f"the caffe2 module stacks LSTM layers only; this GRU has {layer.layers} layers")
        time_major = model.net.Transpose(blob, name + "_tnd", axes=[1, 0, 2])
        states = []
        for index in range(layer.layers):
            for state in (("h", "c") if lstm else ("h",)):
                state_blob = f"{name}_{state}0_{index}"
                self.states[state_blob] = (1, self.batch, hidden)
                states.append(state_blob)
        before = set(str(param) for param in model.params)
        # (h_all, h_last, ...) of the last layer: the gradient enters the one the network reads.
        read = 0 if layer.return_sequences else 1
        if lstm:
            outputs = rnn_cell.LSTM(model, time_major, None, states, layer.input_shape[1], [hidden] * layer.layers,
                                    scope=name, outputs_with_grads=(read,), forward_only=self.mode == "infer")
        else:
            outputs = gru_cell.GRU(model, time_major, None, states, layer.input_shape[1], [hidden], scope=name,
                                   outputs_with_grads=(read,), forward_only=self.mode == "infer",
                                   linear_before_reset=True)
        made = [str(param) for param in model.params if str(param) not in before]
        self._bind_recurrent(layer, name, made)
        if layer.return_sequences:
            return model.net.Transpose(outputs[0], name, axes=[1, 0, 2])
        last, _ = model.net.Reshape(outputs[1], [name, name + "_last_shape"], shape=[-1, hidden])
        return last

    def _bind_recurrent(self, layer: Layer, name: str, made: List[str]) -> None:
        """The canonical names of rnn_cell's parameters, found by their scoped names."""
        def one(layer_index: int, suffix: str) -> str:
            # One layer: every name under the scope. Stacked (MultiRNNCell): layer_K/ for each layer,
            # except the first layer's input FC, which runs over the whole sequence outside the step.
            wanted = [f"{name}/layer_{layer_index}/{suffix}"] + ([f"{name}/{suffix}"] if layer_index == 0 else [])
            found = [blob for blob in made if blob in wanted]
            if len(found) != 1:
                raise ValueError(f"the caffe2 module expected one of rnn_cell's parameters {wanted} among {made}")
            return found[0]

        for index in range(layer.layers):
            prefix = f"{layer.path}.layer{index}."
            if layer.type == "LSTM":
                # LSTMCell adds a bias on each side (i2h_b, gates_t_b); the spec has one: the input
                # side's, and the recurrent one stays zero, out of the optimizer.
                self.handles.update({prefix + "input_kernel": one(index, "i2h_w"),
                                     prefix + "recurrent_kernel": one(index, "gates_t_w"),
                                     prefix + "bias": one(index, "i2h_b")})
                self.frozen.append(one(index, "gates_t_b"))
            else:
                # GRUCell: one input FC (r, z, n) and an FC per gate on the state, each with its bias.
                gates = ("reset_gate_t", "update_gate_t", "output_gate_t")
                self.handles.update({
                    prefix + "input_kernel": one(index, "i2h_w"), prefix + "input_bias": one(index, "i2h_b"),
                    prefix + "recurrent_kernel": tuple(one(index, gate + "_w") for gate in gates),
                    prefix + "recurrent_bias": tuple(one(index, gate + "_b") for gate in gates)})


class Caffe2Model(BaseModel):
    """Dense and recurrent kernels (out, in) as FC stores them; LSTMUnit's gates i, f, o, g."""

    conventions: ClassVar[Dict[str, str]] = {"dense_kernel": "out_in", "recurrent_kernel": "out_in",
                                              "lstm_gates": "ifog"}

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if self.precision != "float32":
            raise Unsupported("Caffe2's CPU operators (FC, Conv, Relu, SpatialBN, SoftmaxWithLoss, LSTMUnit) have "
                              f"float32 kernels only, not {self.precision}")
        workspace.ResetWorkspace()
        self._nets: Dict[Tuple[str, int], str] = {}  # (mode, batch) -> the created net's name
        self._builders: Dict[Tuple[str, int], _Builder] = {}
        self._fed: Dict[str, Any] = {}  # blob -> the array last fed (fed again only when another comes)
        self._batch = self.batch_size or 1
        # The first model makes the parameters (its param_init_net runs once); the others share them
        # by name (init_params=False). The training model must be that one: caffe2's optimizers add
        # their state to param_init_net as ConstantFill([param]), which refuses a parameter that
        # param_init_net names but does not make (an ExternalInitializer's).
        if self.training:
            self._model("train", self.batch_size)
        infer = self._model("infer", self._batch)
        self._handles = dict(infer.handles)
        self._frozen = list(infer.frozen)

    # Building ---------------------------------------------------------------------------------

    def _model(self, mode: str, batch: int) -> _Builder:
        key = (mode, batch if mode != "infer" else 0)
        if key in self._builders:
            return self._builders[key]
        first = not self._builders
        model = model_helper.ModelHelper(name=f"{mode}_{batch}", init_params=first)
        builder = _Builder(model, mode, batch)
        logits = builder.sequence(self.network.layers, _INPUT)
        if mode == "infer":
            builder.output = logits
        else:
            builder.output = self._loss(model, logits, batch)
            gradients = model.AddGradientOperators([builder.output])
            self._dense_embedding_gradients(model, builder, gradients)
            builder.gradients = {name: str(model.param_to_grad[core.BlobReference(blob)])
                                 for name, blob in builder.handles.items() if not isinstance(blob, tuple)}
            builder.gradients.update({name: tuple(str(model.param_to_grad[core.BlobReference(part)]) for part in blob)
                                      for name, blob in builder.handles.items() if isinstance(blob, tuple)})
            for blob in builder.frozen:  # out of the optimizer (it steps what param_to_grad maps)
                del model.param_to_grad[core.BlobReference(blob)]
            if mode == "train":
                self._optimizer(model)
        if _THREADS["count"]:
            for op in model.net.Proto().op:
                if op.type in _RECURRENT_OPS:
                    recurrent.set_rnn_executor_config(op, num_threads=_THREADS["count"])
        for blob, value in builder.constants.items():
            workspace.FeedBlob(blob, value)
        workspace.RunNetOnce(model.param_init_net if first else self._missing(model.param_init_net))
        if first:
            for blob in builder.frozen:
                workspace.FeedBlob(blob, np.zeros_like(workspace.FetchBlob(blob)))
        self._builders[key] = builder
        builder.model = model
        return builder

    @staticmethod
    def _missing(init_net: Any) -> Any:
        """The operators of a later model's param_init_net that make blobs not made yet (optimizer
        state). init_params=False leaves brew's own parameters out of it, but not those rnn_cell's
        step model makes, which running it whole would draw again over the loaded weights."""
        missing = core.Net(init_net.Name() + "_missing")
        missing.Proto().op.extend([op for op in init_net.Proto().op
                                   if not all(workspace.HasBlob(output) for output in op.output)])
        return missing

    def _loss(self, model: Any, logits: Any, batch: int) -> Any:
        """Summed softmax cross-entropy over the loss divisor: SoftmaxWithLoss averages over its rows,
        so its mean is scaled by rows / divisor."""
        rows = batch
        if self.network.label_kind == "token":
            logits, _ = model.net.Reshape(logits, ["logits_rows", "logits_shape"], shape=[-1, self.network.classes])
            rows = batch * self.network.input_shape[0]
        _, mean = model.net.SoftmaxWithLoss([logits, _LABEL], ["softmax", "mean_loss"])
        return model.net.Scale(mean, "loss", scale=float(rows) / self.loss_divisor)

    def _dense_embedding_gradients(self, model: Any, builder: _Builder, gradients: Dict[Any, Any]) -> None:
        """Gather's gradient is sparse (GradientSlice); PyTorch's nn.Embedding, which the recipes
        follow, has a dense one, which its optimizers and clipping see: SparseToDense sums the rows."""
        for table, flat in builder.embeddings:
            sparse = gradients[core.BlobReference(table)]
            dense = model.net.SparseToDense([flat, sparse.values, table], table + "_grad_dense")
            model.param_to_grad[core.BlobReference(table)] = dense
            model.get_param_info(core.BlobReference(table)).grad = dense  # what the optimizers read

    def _optimizer(self, model: Any) -> None:
        """The recipe's optimizer through caffe2.python.optimizer, with PyTorch's semantics where Caffe2's
        differ (measured against PyTorch's update rules, see the module's tests)."""
        recipe = self.recipe["optimizer"]
        name, lr, decay = recipe["name"], float(recipe["lr"]), float(recipe["weight_decay"])
        clip = self.recipe["grad_clip_norm"]
        if clip is not None and (name != "sgd" or decay):
            # optimizer.build_*'s max_gradient_norm scales the learning rate by clip / max(norm, clip):
            # the same step as clipping the gradient for SGD alone, and only without weight decay
            # (its norm would include the decay term).
            raise Unsupported("caffe2's max_gradient_norm clips through the learning rate, which matches "
                              "gradient clipping for SGD without weight decay only, not {}{}".format(
                                  name, " with weight decay" if decay else ""))
        if decay:
            # PyTorch's weight_decay: g + wd * w for every parameter (optimizer.add_weight_decay skips biases).
            one = model.param_init_net.ConstantFill([], "decay_one", shape=[1], value=1.0)
            rate = model.param_init_net.ConstantFill([], "decay_rate", shape=[1], value=decay)
            for param, grad in list(model.param_to_grad.items()):
                model.net.WeightedSum([grad, one, param, rate], grad)
        if name == "sgd":
            # Caffe2's MomentumSGDUpdate keeps lr inside the velocity (v = m*v + lr*g; w -= v), PyTorch
            # outside (v = m*v + g; w -= lr*v): the same steps at a fixed rate. Its nesterov defaults to True.
            optimizer.build_sgd(model, base_learning_rate=lr, policy="fixed", momentum=float(recipe["momentum"]),
                                nesterov=bool(recipe["nesterov"]), max_gradient_norm=clip)
        elif name == "adam":
            # Caffe2's Adam adds epsilon to sqrt(v) before the bias correction (as TensorFlow, Keras
            # and MXNet), PyTorch after.
            optimizer.build_adam(model, base_learning_rate=lr, policy="fixed", beta1=float(recipe["beta1"]),
                                 beta2=float(recipe["beta2"]), epsilon=float(recipe["eps"]))
            self._adam_first_step(model)
        elif name == "rmsprop":
            # Caffe2's RmsProp divides by sqrt(ms + eps), PyTorch by sqrt(ms) + eps: given eps squared,
            # sqrt(ms + eps^2) lies between max(sqrt(ms), eps) and sqrt(ms) + eps, so the two differ only
            # where sqrt(ms) is near eps. Given eps itself, its floor would be sqrt(eps) (1e-4 for 1e-8),
            # and a small gradient (a bias, a lower LSTM layer) steps a fraction of PyTorch's step.
            optimizer.build_rms_prop(model, base_learning_rate=lr, decay=float(recipe["rho"]),
                                     epsilon=float(recipe["eps"]) ** 2, momentum=0.0, policy="fixed")
        elif name == "adadelta":
            optimizer.build_adadelta(model, base_learning_rate=lr, decay=float(recipe["rho"]),
                                     epsilon=float(recipe["eps"]), policy="fixed")
        else:
            raise Unsupported(f"the caffe2 module has no optimizer {name!r}")

    @staticmethod
    def _adam_first_step(model: Any) -> None:
        """Caffe2's Adam op corrects its moments for step ``ITER + 1``, and the optimizer's iteration
        counter (AtomicIter, before the updates) already reads 1 at the first step: its first step is
        bias-corrected as the second (measured: 7% off PyTorch's Adam over 5 steps, 1e-7 with this).
        The Adam ops read the counter minus one instead (the counter itself refuses to start below 0)."""
        adams = [index for index, op in enumerate(model.net.Proto().op) if op.type == "Adam"]
        iteration = model.net.Proto().op[adams[0]].input[_ADAM_ITER_INPUT]
        one = model.param_init_net.ConstantFill([], "adam_one", shape=[1], value=1, dtype=core.DataType.INT64)
        model.net.Sub([iteration, one], "adam_iteration")  # appended; moved before the first Adam below
        ops = list(model.net.Proto().op)
        for index in adams:
            ops[index].input[_ADAM_ITER_INPUT] = "adam_iteration"
        del model.net.Proto().op[:]
        model.net.Proto().op.extend(ops[:adams[0]] + ops[-1:] + ops[adams[0]:-1])

    # Running --------------------------------------------------------------------------------

    def _feed(self, inputs: Any, labels: Any = None) -> int:
        """Feed a batch (again only when another array comes), and the recurrent initial states."""
        batch = len(inputs)
        if self._fed.get(_INPUT) is not inputs:
            workspace.FeedBlob(_INPUT, inputs if self.network.input_kind == "tokens" else
                               np.ascontiguousarray(inputs, dtype=np.float32))
            self._fed[_INPUT] = inputs
        if labels is not None and self._fed.get(_LABEL) is not labels:
            workspace.FeedBlob(_LABEL, np.ascontiguousarray(np.asarray(labels).reshape(-1), dtype=np.int32))
            self._fed[_LABEL] = labels
        return batch

    def _run(self, mode: str, batch: int) -> _Builder:
        builder = self._model(mode, batch)
        key = (mode, batch if mode != "infer" else 0)
        for blob, shape in builder.states.items():
            shape = (shape[0], batch, shape[2])
            current = self._fed.get(blob)
            if current is None or current.shape != shape:
                self._fed[blob] = np.zeros(shape, np.float32)
                workspace.FeedBlob(blob, self._fed[blob])
        if key not in self._nets:
            workspace.CreateNet(builder.model.net)
            self._nets[key] = builder.model.net.Name()
        workspace.RunNet(self._nets[key])
        return builder

    def handles(self) -> Dict[str, Any]:
        return self._handles

    def read(self, handle: Any) -> Any:
        if isinstance(handle, tuple):  # GRU: the recurrent FCs of r, z, n stacked as one (3H, H)
            return np.concatenate([workspace.FetchBlob(part) for part in handle], axis=0)
        return workspace.FetchBlob(handle)

    def write(self, handle: Any, value: Any) -> None:
        if isinstance(handle, tuple):
            for part, block in zip(handle, np.split(value, len(handle), axis=0)):
                workspace.FeedBlob(part, np.ascontiguousarray(block))
            return
        workspace.FeedBlob(handle, np.ascontiguousarray(value))

    def reset_statistics(self) -> None:
        for blob in workspace.Blobs():
            if blob.endswith("_rm") or blob.endswith("_riv"):
                current = workspace.FetchBlob(blob)
                workspace.FeedBlob(blob, np.full_like(current, 0.0 if blob.endswith("_rm") else 1.0))

    def logits(self, inputs: Any) -> Any:
        self._run("infer", self._feed(inputs))
        return workspace.FetchBlob(str(self._builders[("infer", 0)].output))

    def infer_step(self, inputs: Any) -> Any:
        self._run("infer", self._feed(inputs))

    def gradients(self, inputs: Any, labels: Any) -> Tuple[float, Dict[str, Any]]:
        builder = self._run("grad", self._feed(inputs, labels))
        loss = float(workspace.FetchBlob(str(builder.output)))
        return loss, {name: self.read(blob) for name, blob in builder.gradients.items()}

    def train_step(self, inputs: Any, labels: Any) -> Any:
        builder = self._run("train", self._feed(inputs, labels))
        return workspace.FetchBlob(str(builder.output))

    def trainable_params(self) -> int:
        return sum(int(np.prod(workspace.FetchBlob(str(param)).shape)) for param in
                   self._builders[("infer", 0)].model.params if str(param) not in self._frozen)

    def parity(self) -> Dict[str, Any]:
        return {"execution": "graph", "details": {"engine": "caffe2 CPU operators (MKL BLAS)",
                                                  "nets": sorted(self._nets.values())}}


Model = Caffe2Model
