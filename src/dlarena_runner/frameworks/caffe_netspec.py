"""BVLC Caffe 1.0 (Debian bullseye's 1.0.0+git20180821) through pycaffe, as DLBench ran it.

Each network is generated as prototxt with ``caffe.NetSpec`` from the spec: InnerProduct,
Convolution, Pooling (``round_mode: FLOOR``, the spec's output size; Caffe's default rounds up),
BatchNorm followed by Scale (Caffe's BatchNorm has no affine part), ReLU/Sigmoid/TanH, Dropout,
Flatten, Embed, LSTM (time-major, with its sequence-continuation input), Eltwise SUM for a
residual, Concat. The loss is SoftmaxWithLoss without normalisation (the summed cross-entropy)
with ``loss_weight`` 1/divisor, so that the gradients are those of the spec's loss; the loss blob
holds the sum, which ``train_step`` divides.

Training is Caffe's own solver on the TRAIN-phase net (``solver.step(1)``: clear diffs, forward,
backward, update), timed as the studies timed ``caffe train``. Logits and gradients come from a
TEST-phase net sharing the trained layers' blobs (BatchNorm on its stored statistics, Dropout the
identity). pycaffe exposes only ``Net<float>``: float64 is unsupported. One difference stays, outside
what a step computes: Caffe's BatchNorm stores its statistics as a sum weighted by
``moving_average_fraction`` and divided by the sum of the weights (a bias-corrected average), where
PyTorch keeps a moving average that starts from 0 / 1; training steps normalise by the batch's
statistics in both, so their losses and updates agree.

Caffe's solvers against the spec's (PyTorch's) optimizers: SGD keeps ``V = m V + lr (g + wd w)``,
``w -= V``, which is PyTorch's ``v = m v + g + wd w``, ``w -= lr v`` scaled by lr: the same steps for
a constant learning rate (the recipe's is). Nesterov's ``w -= (1 + m) V' - m V`` is PyTorch's
``w -= lr (g + m v')`` likewise. RMSProp (``rms_decay``, ``delta``) and AdaDelta (``momentum`` as rho,
``delta`` as eps) are PyTorch's updates; Adam puts eps outside the bias correction (TensorFlow's
"epsilon hat" form, as tensorflow_native's ResourceApplyAdam does). Weight decay is L2 added to the
gradient, after clipping, in every solver; ``clip_gradients`` is global-norm clipping.

Python 3.6 syntax (dlarena_runner); runs on the ``caffe`` environment's Python 3.9.
"""

import ctypes
import os
import re
import subprocess
import sysconfig
import tempfile
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import caffe
import numpy as np
from caffe import layers as L
from caffe import params as P
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from dlarena_runner.model import Layer, Unsupported
from dlarena_runner.model import Model as BaseModel

# Caffe's BatchNorm weights its stored statistics by ``moving_average_fraction`` (the old ones' share),
# the spec's momentum is the new batch's share (PyTorch's): fraction = 1 - momentum.
_ACTIVATIONS = {"relu": L.ReLU, "sigmoid": L.Sigmoid, "tanh": L.TanH}
# Caffe's solver types for the recipe's optimizers, with the solver fields each recipe field sets.
_SOLVERS = {
    "sgd": ("SGD", {"momentum": "momentum"}),
    "adam": ("Adam", {"beta1": "momentum", "beta2": "momentum2", "eps": "delta"}),
    "rmsprop": ("RMSProp", {"rho": "rms_decay", "eps": "delta"}),
    "adadelta": ("AdaDelta", {"rho": "momentum", "eps": "delta"}),
}
DATA, LABEL, CONT, LOSS = "data", "label", "cont", "loss"
# The `caffe time` cross-check of a timed cell runs about this long (plus the tool's start, about a
# second here), at most this many iterations: a check of the timing, not a second measurement.
CROSS_CHECK_BUDGET_S = 2.0
CROSS_CHECK_MAX_ITERATIONS = 10
# `caffe time`'s summary lines (tools/caffe.cpp): "Average Forward pass: 13.67 ms." and the same for
# "Backward pass" (sums of the layers' microsecond timers) and "Forward-Backward" (whole milliseconds
# per iteration, averaged: 0 for a network under 1 ms).
_TIME_LINES = {"forward_ms": re.compile(r"Average Forward pass: ([0-9.eE+-]+) ms"),
               "backward_ms": re.compile(r"Average Backward pass: ([0-9.eE+-]+) ms"),
               "forward_backward_ms": re.compile(r"Average Forward-Backward: ([0-9.eE+-]+) ms")}
CAFFE_TIME_TIMEOUT_S = 3600


def version() -> str:
    return str(caffe.__version__)


def _openblas() -> Any:
    """The OpenBLAS that Caffe links as libblas.so.3 (the environment puts its folder first)."""
    try:
        library = ctypes.CDLL("libblas.so.3")
        library.openblas_get_num_threads  # noqa: B018 -- present only in OpenBLAS
        return library
    except (OSError, AttributeError):
        return None


def set_threads(threads: int) -> Optional[int]:
    """Caffe's CPU work is OpenBLAS's (plus its own single-threaded loops): OpenBLAS's thread count."""
    caffe.set_mode_cpu()
    library = _openblas()
    if library is None:
        return None
    library.openblas_set_num_threads(int(threads))
    return int(library.openblas_get_num_threads())


def _net_file(proto: Any, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as handle:
        handle.write(text_format.MessageToString(proto))
    return path


def denormal_product(a: Any, b: Any) -> Any:
    """``a @ b`` by an InnerProduct layer (OpenBLAS's sgemm, as Caffe's steps run it)."""
    spec = caffe.NetSpec()
    spec.tops[DATA] = L.Input(shape=dict(dim=list(a.shape)))
    spec.tops["product"] = L.InnerProduct(spec.tops[DATA], num_output=b.shape[1], bias_term=False)
    with tempfile.TemporaryDirectory(prefix="dlarena-caffe-") as folder:
        net = caffe.Net(_net_file(spec.to_proto(), folder, "product.prototxt"), caffe.TEST)
    net.params["product"][0].data[...] = np.asarray(b, np.float32).T
    net.blobs[DATA].data[...] = a
    return np.array(net.forward()["product"])


class _Builder:
    """The spec's layers as NetSpec tops, and where each canonical parameter lives."""

    def __init__(self, spec: Any, time_major: bool) -> None:
        self.spec, self.time_major = spec, time_major
        self.handles = {}  # type: Dict[str, Tuple[str, int]]
        self.statistics = []  # type: List[str]

    def sequence(self, layers: List[Layer], top: Any, owned: bool) -> Any:
        """``owned``: ``top`` is read by nothing else, so a layer may overwrite it (in place)."""
        for layer in layers:
            top = self.layer(layer, top, owned)
            owned = True
        return top

    def _put(self, name: str, top: Any) -> Any:
        self.spec.tops[name] = top
        return top

    def layer(self, layer: Any, top: Any, owned: bool) -> Any:  # a Layer: its fields are attributes
        path, kind = layer.path, layer.type
        if kind == "Dense":
            # InnerProduct flattens every axis from `axis` on: a (C, H, W) sample after Flatten, or the
            # feature axis of a time-major (T, N, F) sequence.
            axis = 2 if self.time_major else 1
            self.handles[path + ".kernel"] = (path, 0)
            if layer.bias:
                self.handles[path + ".bias"] = (path, 1)
            return self._put(path, L.InnerProduct(top, num_output=layer.units, bias_term=layer.bias, axis=axis))
        if kind == "Conv2D":
            (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
            self.handles[path + ".kernel"] = (path, 0)
            if layer.bias:
                self.handles[path + ".bias"] = (path, 1)
            return self._put(path, L.Convolution(top, num_output=layer.filters, bias_term=layer.bias, kernel_h=kh,
                                                 kernel_w=kw, stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw))
        if kind in ("MaxPool2D", "AvgPool2D"):
            (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
            # Caffe's AVE counts the padding inside the input's padded border, as the spec's AvgPool2D does.
            pool = P.Pooling.MAX if kind == "MaxPool2D" else P.Pooling.AVE
            return self._put(path, L.Pooling(top, pool=pool, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw,
                                             pad_h=ph, pad_w=pw, round_mode=P.Pooling.FLOOR))
        if kind == "GlobalAvgPool2D":
            pooled = self._put(path + ".pool", L.Pooling(top, pool=P.Pooling.AVE, global_pooling=True))
            return self._put(path, L.Flatten(pooled, axis=1))  # (N, C, 1, 1) -> the spec's (N, C)
        if kind == "BatchNorm":
            if self.time_major:
                raise Unsupported("Caffe's BatchNorm normalises axis 1, the batch axis of a time-major sequence")
            normed = self._put(path + ".bn", L.BatchNorm(top, in_place=owned, batch_norm_param=dict(
                eps=layer.eps, moving_average_fraction=1.0 - layer.momentum)))
            self.statistics.append(path + ".bn")
            self.handles[path + ".gamma"], self.handles[path + ".beta"] = (path, 0), (path, 1)
            return self._put(path, L.Scale(normed, in_place=True, bias_term=True))
        if kind == "Activation":
            return self._put(path, _ACTIVATIONS[layer.function](top, in_place=owned))
        if kind == "Dropout":
            return self._put(path, L.Dropout(top, in_place=owned, dropout_ratio=layer.rate))
        if kind == "Flatten":
            if self.time_major:
                raise Unsupported("Flatten of a sequence is not expressed in this Caffe module")
            return self._put(path, L.Flatten(top, axis=1))
        if kind == "Embedding":
            self.handles[path + ".table"] = (path, 0)
            return self._put(path, L.Embed(top, num_output=layer.dim, input_dim=layer.vocab, bias_term=False))
        if kind == "LSTM":
            return self._lstm(layer, top)
        if kind == "Residual":
            body = self.sequence(list(layer.body), top, False)
            shortcut = self.sequence(list(layer.shortcut), top, False) if layer.shortcut else top
            return self._put(path, L.Eltwise(body, shortcut, operation=P.Eltwise.SUM))
        if kind == "Concat":
            branches = [self.sequence(list(branch), top, False) for branch in layer.branches]
            return self._put(path, L.Concat(*branches, axis=1))
        raise Unsupported(f"this Caffe module has no {kind} layer")

    def _lstm(self, layer: Any, top: Any) -> Any:
        """Caffe's LSTM: (T, N, F) with a continuation input (0 at t = 0: zero initial state);
        blobs W_xc (4H, F), b_c (4H,), W_hc (4H, H), gates i, f, o, g."""
        path = layer.path
        for k in range(layer.layers):
            name = f"{path}.layer{k}"
            top = self._put(name, L.LSTM(top, self.spec.tops[CONT], recurrent_param=dict(num_output=layer.hidden)))
            self.handles[name + ".input_kernel"] = (name, 0)
            self.handles[name + ".bias"] = (name, 1)
            self.handles[name + ".recurrent_kernel"] = (name, 2)
        if not layer.return_sequences:
            steps = layer.input_shape[0]
            if steps > 1:  # the last step's output (the earlier ones stay an unread output of the net)
                early, top = L.Slice(top, slice_param=dict(axis=0, slice_point=[steps - 1]), ntop=2)
                self._put(path + ".early", early)
                self._put(path + ".last", top)
            top = self._put(path, L.Reshape(top, shape=dict(dim=[-1, layer.hidden])))
            self.time_major = False
        return top


class CaffeModel(BaseModel):
    conventions: ClassVar[Dict[str, str]] = {"dense_kernel": "out_in", "recurrent_kernel": "out_in",
                                             "lstm_gates": "ifog"}

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if self.dtype != np.float32:
            raise Unsupported(f"pycaffe builds float32 nets only (Net<float>); Caffe has no {self.precision}")
        for layer in self.network.leaves():
            if layer.type == "GRU":
                raise Unsupported("Caffe 1.0 has no GRU layer (its recurrent layers are RNN and LSTM)")
        network = self.network
        self.tokens = network.input_kind == "tokens"
        self.sequence = len(network.input_shape) == 2 or self.tokens  # Caffe's recurrent layers are time-major
        self.batch = max(self.batch_size, 1)
        self.logits_name = ""
        self.token_labels = network.label_kind == "token"
        # One prototxt: the phase a net is made in decides BatchNorm's statistics and Dropout.
        self.prototxt = self._proto()
        self.solver = None  # type: Any
        with tempfile.TemporaryDirectory(prefix="dlarena-caffe-") as folder:  # Caffe reads its files once
            path = _net_file(self.prototxt, folder, "net.prototxt")
            if self.training:
                self.solver = caffe.get_solver(self._solver_file(folder, path))
                self.net = self.solver.net
                self.test = caffe.Net(path, caffe.TEST)
                self.test.share_with(self.net)  # the TEST net reads the trained layers' blobs
            else:
                self.net = self.test = caffe.Net(path, caffe.TEST)
        self._loaded = None  # type: Any

    # Building ---------------------------------------------------------------------------------

    def _shapes(self, batch: int) -> Tuple[List[int], List[int]]:
        """The data and label blobs' shapes for a batch (time-major for sequences)."""
        shape = list(self.network.input_shape)
        data = [shape[0], batch, *shape[1:]] if self.sequence else [batch, *shape]
        if self.token_labels:
            return data, [shape[0], batch]
        return data, [batch]

    def _proto(self) -> Any:
        spec = caffe.NetSpec()
        data_shape, label_shape = self._shapes(self.batch)
        spec.tops[DATA] = L.Input(shape=dict(dim=data_shape))
        spec.tops[LABEL] = L.Input(shape=dict(dim=label_shape))
        if self.sequence:
            spec.tops[CONT] = L.Input(shape=dict(dim=data_shape[:2]))
        builder = _Builder(spec, self.sequence)
        logits = builder.sequence(self.network.layers, spec.tops[DATA], False)
        self.handles_, self.statistics = builder.handles, builder.statistics
        axis = 2 if builder.time_major else 1
        spec.tops[LOSS] = L.SoftmaxWithLoss(logits, spec.tops[LABEL], softmax_param=dict(axis=axis),
                                            loss_param=dict(normalization=P.Loss.NONE),
                                            loss_weight=1.0 / self.loss_divisor)
        self.time_major_logits = builder.time_major
        proto = spec.to_proto()
        proto.name = "dlarena"
        last = self.network.layers[-1].path
        # The logits' layer, and its top (an in-place layer's top is named after its bottom).
        self.logits_layer = last
        self.logits_name = next(layer.top[0] for layer in proto.layer if layer.name == last)
        return proto

    def _solver_file(self, folder: str, net: str) -> str:
        optimizer = self.recipe["optimizer"]
        name = optimizer["name"]
        if name not in _SOLVERS:
            raise Unsupported("Caffe has no {} solver; it has {}".format(name, ", ".join(sorted(_SOLVERS))))
        if name == "sgd" and optimizer.get("nesterov"):
            kind, fields = "Nesterov", {"momentum": "momentum"}
        else:
            kind, fields = _SOLVERS[name]
        solver = caffe_pb2.SolverParameter()
        solver.train_net = net
        solver.type = kind
        solver.base_lr = float(optimizer["lr"])
        solver.lr_policy = "fixed"
        solver.weight_decay = float(optimizer.get("weight_decay") or 0.0)
        solver.regularization_type = "L2"
        solver.display = 0
        solver.max_iter = 2 ** 30
        solver.snapshot_after_train = False
        solver.solver_mode = caffe_pb2.SolverParameter.CPU
        if name in ("sgd", "adam"):
            solver.momentum = 0.0  # SGD without momentum (Caffe's default is 0 too); Adam's beta1 below
        for field, target in fields.items():
            setattr(solver, target, float(optimizer[field]))
        if self.recipe.get("grad_clip_norm") is not None:
            solver.clip_gradients = float(self.recipe["grad_clip_norm"])
        path = os.path.join(folder, "solver.prototxt")
        with open(path, "w") as handle:
            handle.write(text_format.MessageToString(solver))
        return path

    # The kernel's methods -----------------------------------------------------------------------

    def handles(self) -> Dict[str, Any]:
        return dict(self.handles_)

    def read(self, handle: Any) -> Any:
        layer, index = handle
        return np.array(self.net.params[layer][index].data)

    def write(self, handle: Any, value: Any) -> None:
        layer, index = handle
        self.net.params[layer][index].data[...] = value

    def reset_statistics(self) -> None:
        for name in self.statistics:
            mean, variance, factor = self.net.params[name]
            mean.data[...], variance.data[...], factor.data[...] = 0.0, 1.0, 1.0

    def device_batch(self, array: Any) -> Any:
        """Time-major for sequences, float32 (Caffe's blobs hold floats; token ids below 2^24 are exact)."""
        array = np.asarray(array)
        if self.sequence and array.ndim >= 2:
            array = np.swapaxes(array, 0, 1)
        return np.ascontiguousarray(array, dtype=np.float32)

    def _feed(self, net: Any, inputs: Any, labels: Any = None) -> None:
        """The batch into the net's input blobs, reshaping it for another batch size; a batch already
        there (the timed loop steps on one) is not copied again."""
        batch = inputs.shape[1] if self.sequence else inputs.shape[0]
        if net.blobs[DATA].data.shape != inputs.shape:
            data_shape, label_shape = self._shapes(batch)
            net.blobs[DATA].reshape(*data_shape)
            net.blobs[LABEL].reshape(*label_shape)
            if self.sequence:
                net.blobs[CONT].reshape(*data_shape[:2])
            net.reshape()
        # The arrays themselves are held (not their ids, which a freed array's successor may reuse).
        loaded = self._loaded
        if loaded is not None and loaded[0] is net and loaded[1] is inputs and loaded[2] is labels:
            return
        net.blobs[DATA].data[...] = inputs
        if labels is not None:
            net.blobs[LABEL].data[...] = labels
        if self.sequence:
            cont = net.blobs[CONT].data
            cont[...] = 1.0
            cont[0] = 0.0  # a new sequence starts at t = 0: zero initial state
        self._loaded = (net, inputs, labels)

    def _logits(self) -> Any:
        logits = np.array(self.test.blobs[self.logits_name].data)
        return np.swapaxes(logits, 0, 1) if self.time_major_logits else logits

    def logits(self, inputs: Any) -> Any:
        self._feed(self.test, inputs)
        self.test.forward(end=self.logits_layer)
        return self._logits()

    def infer_step(self, inputs: Any) -> Any:
        self._feed(self.test, inputs)
        return self.test.forward(end=self.logits_layer)

    def gradients(self, inputs: Any, labels: Any) -> Tuple[float, Dict[str, Any]]:
        self._feed(self.test, inputs, labels)
        self.test.clear_param_diffs()  # Caffe's backward adds into the diffs
        loss = float(self.test.forward()[LOSS]) / self.loss_divisor
        self.test.backward()
        return loss, {name: np.array(self.test.params[layer][index].diff)
                      for name, (layer, index) in self.handles_.items()}

    def train_step(self, inputs: Any, labels: Any) -> Any:
        self._feed(self.net, inputs, labels)
        self.solver.step(1)
        return float(self.net.blobs[LOSS].data) / self.loss_divisor

    def trainable_params(self) -> int:
        return sum(int(self.net.params[layer][index].count) for layer, index in self.handles_.values())

    def tool_time(self, iterations: int) -> Dict[str, Any]:
        """``caffe time`` on this model's prototxt at its batch size (the cross-check of ``caffe_time``)."""
        with tempfile.TemporaryDirectory(prefix="dlarena-caffe-") as folder:
            return caffe_time(_net_file(self.prototxt, folder, "net.prototxt"), iterations)

    def cross_check(self, step_s: float) -> Dict[str, Any]:
        """``caffe time`` on the same prototxt beside the timed loop's median step ``step_s`` (the job
        worker stores it in the parity details): DLBench timed Caffe with this tool, so a large gap
        between the two would point at pycaffe's overhead, not at Caffe."""
        iterations = max(1, min(CROSS_CHECK_MAX_ITERATIONS, int(CROSS_CHECK_BUDGET_S / max(step_s, 1e-6))))
        found = self.tool_time(iterations)
        found["pycaffe_median_ms"] = step_s * 1e3
        return found

    def parity(self) -> Dict[str, Any]:
        library = _openblas()
        return {"execution": "graph", "threads": int(library.openblas_get_num_threads()) if library else None,
                "details": {"solver": self.solver.__class__.__name__ if self.solver else None,
                            "blas": "OpenBLAS (libblas.so.3)" if library else "unknown"}}


Model = CaffeModel


# The `caffe time` cross-check -------------------------------------------------------------------


def caffe_binary() -> str:
    """The `caffe` tool of the same Debian package set as pycaffe (usr/bin beside usr/lib/python3)."""
    usr = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(caffe.__file__)))))
    path = os.path.join(usr, "bin", "caffe")
    return path if os.path.exists(path) else "caffe"


def caffe_time(prototxt: str, iterations: int = 10, timeout: float = CAFFE_TIME_TIMEOUT_S) -> Dict[str, Any]:
    """``caffe time -model PROTOTXT -iterations N`` on the CPU: its average forward, backward and
    forward-backward in ms, as DLBench's Caffe scripts measured (forward and backward of every layer; no
    solver update; the input blobs as Caffe allocates them, zeros). Threads as the calling process's
    environment sets them (OPENBLAS_NUM_THREADS)."""
    command = [caffe_binary(), "time", "-model", prototxt, "-iterations", str(iterations)]
    environment = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")  # its summary is an INFO line
    # libcaffe links libpython3.9.so.1.0: the tool loads this interpreter's (the environment leaves
    # Debian's out, so that pycaffe shares the running interpreter's).
    library = sysconfig.get_config_var("LIBDIR")
    if library:
        environment["LD_LIBRARY_PATH"] = ":".join(filter(None, [environment.get("LD_LIBRARY_PATH"), library]))
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment,
                               universal_newlines=True, timeout=timeout)  # noqa: UP021 -- text= is Python 3.7+
    found = {key: pattern.findall(completed.stdout) for key, pattern in _TIME_LINES.items()}
    if completed.returncode != 0 or not all(found.values()):
        tail = " | ".join(completed.stdout.strip().splitlines()[-3:])
        raise RuntimeError(f"caffe time failed (exit {completed.returncode}): {tail}")
    result = {key: float(values[-1]) for key, values in found.items()}  # type: Dict[str, Any]
    result.update(iterations=iterations, command=command)
    return result
