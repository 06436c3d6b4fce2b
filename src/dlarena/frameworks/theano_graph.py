"""Theano 1.0.5: the spec's network as one symbolic graph, compiled by ``theano.function``.

The graph is symbolic_graph's (shared with PyTensor, Theano's successor): parameters are shared
variables, ``nnet.conv2d``, ``signal.pool.pool_2d``, ``scan`` for recurrent layers, the optimizer a
list of update expressions applied by ``theano.function(..., updates=...)`` in the same compiled
call as the forward and backward pass. This module gives it Theano's own ops. Theano is configured
before it is imported (theano_setup.configure: compile directory, OpenMP); every variable and
constant is made in the Model's precision, so a float64 Model is float64 throughout although floatX
is float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlarena.frameworks import kernel, symbolic_graph, theano_setup
from dlarena.frameworks.base import Parity
from dlarena.spec.layers import AvgPool2D, Conv2D, MaxPool2D, pair

# The optimizer spellings and the dropout seed are symbolic_graph's (the same for PyTensor).
SPELLING = symbolic_graph.SPELLING
DROPOUT_SEED = symbolic_graph.DROPOUT_SEED


class Model(symbolic_graph.GraphModel):
    framework = "theano"

    def _library(self) -> tuple[Any, Any]:
        import theano
        import theano.tensor as T
        from theano.sandbox.rng_mrg import MRG_RandomStreams

        self.rng = MRG_RandomStreams(seed=DROPOUT_SEED)
        return theano, T

    def _conv2d(self, layer: Conv2D, x: Any, kernel_value: Any) -> Any:
        # filter_flip=False: the spec's convolution is a cross-correlation, as in every framework
        # but Theano, whose conv2d flips the kernel unless told not to.
        return self.T.nnet.conv2d(x, kernel_value, border_mode=pair(layer.padding), subsample=pair(layer.stride),
                                  filter_flip=False)

    def _pool(self, layer: MaxPool2D | AvgPool2D, x: Any) -> Any:
        from theano.tensor.signal.pool import pool_2d

        # average_inc_pad: padded positions count in the average (the spec's count_include_pad).
        mode = "max" if isinstance(layer, MaxPool2D) else "average_inc_pad"
        stride = layer.stride if layer.stride is not None else layer.kernel
        out = pool_2d(x, ws=pair(layer.kernel), ignore_border=True, stride=pair(stride),
                      pad=pair(layer.padding), mode=mode)
        return self._one_max_gradient(x, out, layer, pair(stride)) if isinstance(layer, MaxPool2D) else out

    def _relu(self, x: Any) -> Any:
        return self.T.nnet.relu(x)

    def _sigmoid(self, x: Any) -> Any:
        return self.T.nnet.sigmoid(x)

    def _cross_entropy(self, logits: Any, labels: Any) -> Any:
        # Theano's stabilising rewrite turns softmax + categorical_crossentropy into one
        # log-sum-exp op (crossentropy_softmax_argmax_1hot_with_bias), the documented idiom.
        return self.T.nnet.categorical_crossentropy(self.T.nnet.softmax(logits), labels)

    def _dropout_mask(self, x: Any, keep: Any) -> Any:
        # MRG31k3p: Theano's random stream that runs in compiled code.
        return self.rng.binomial(x.shape, p=keep, dtype=self.precision)

    def _scan(self, step: Any, **arguments: Any) -> Any:
        import theano

        outputs, _ = theano.scan(step, **arguments)
        return outputs

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

    def parity(self) -> Parity:
        threads, source = theano_setup.blas_threads()
        details = {"threads_source": source, **theano_setup.config_record(),
                   "compiled_functions": sorted(self.functions)}
        return Parity(threads=threads, execution="graph", details=details)


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

