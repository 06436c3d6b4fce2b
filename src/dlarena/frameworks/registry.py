"""Every framework dlarena knows, without importing any of them.

Adding a framework is one module in this package plus one entry here (and its optional-dependency
extra in pyproject.toml); the conformance tests pick it up from this table.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dlarena.errors import UnknownNameError

if TYPE_CHECKING:  # the command line reads this table for its help: it imports nothing heavier than itself
    from dlarena.frameworks.base import Backend

# What every framework module times in today: base.require's default, which no module widens yet.
# A module that runs another precision passes it to base.require and lists it in its entry here.
TIMED_PRECISIONS: tuple[str, ...] = ("float32",)
# bfloat16 weights and compute, and float32 weights computing in bfloat16 (torch.autocast, Flax's
# ``dtype`` beside ``param_dtype``, ...): the frameworks whose modules build both.
BFLOAT16_PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "mixed-bf16")
# torch's besides, on a GPU only (precision.GPU_ONLY_REASON): float16 weights and compute, and float32
# weights under torch.autocast to float16 with torch.amp.GradScaler's loss scaling.
TORCH_PRECISIONS: tuple[str, ...] = (*BFLOAT16_PRECISIONS, "float16", "mixed-fp16")


# CNTK's CPU kernels run on Intel OpenMP, whose workers spin 200 ms after each parallel region: at
# --threads 1 a second thread stayed busy (frameworks-install.md); 0 puts them to sleep at once.
CNTK_VARIABLES = {"KMP_BLOCKTIME": "0"}
CNTK_GRU_REASON = ("cntk.layers.GRU applies the reset gate before the recurrent product (tanh(W x + U (r*h) + b)) "
                   "with one bias per gate; the spec's GRU (cuDNN form) multiplies a separate recurrent bias "
                   "and U h by the reset gate")


# The spec's transformer layers (the networks of spec/transformers.py). A framework whose dlarena module
# does not build them (``FrameworkInfo.builds_transformers``) stores a transformer's cells as
# `unsupported`, saying so, without starting a worker.
TRANSFORMER_LAYERS = frozenset({"LayerNorm", "MultiHeadSelfAttention", "PositionEmbedding", "TokenTypeEmbedding",
                                "SelectToken", "TiedOutput"})


@dataclass(frozen=True)
class FrameworkInfo:
    name: str
    description: str
    module: str  # the dlarena module that holds its Backend class
    imports: tuple[str, ...]  # top-level packages it needs importable
    distributions: tuple[str, ...]  # installed distributions whose versions key its results
    extra: str  # pyproject optional-dependency extra that installs it
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of its Backend
    scenarios: tuple[str, ...] = ("train", "infer", "accuracy")
    # Precisions its timed and training cells run in; planning refuses a precision no selected
    # framework runs, and a framework without it stores its cells as unsupported.
    precisions: tuple[str, ...] = TIMED_PRECISIONS
    # The same framework without compilation: the report says after how many steps compiling paid off.
    eager_counterpart: str | None = None
    # The managed environment its workers run in (dlarena/environments); None: dlarena's own interpreter.
    environment: str | None = None
    # Variables its worker sets before anything is imported: thread controls the framework reads only
    # from its environment, quieter logs. The worker's own thread variables come first (worker.py).
    variables: dict[str, str] = field(default_factory=dict)
    # How it says it ran out of memory, besides the markers every framework shares (worker.py).
    oom_markers: tuple[str, ...] = ()
    # Layer types (spec/layers.py class names) it cannot express, with the reason: a cell of a network
    # that has one is `unsupported` without starting a worker.
    unsupported_layers: dict[str, str] = field(default_factory=dict)
    # For a framework on an interpreter that cannot import dlarena (CNTK on 3.6, Caffe on 3.9): its
    # module in dlarena_runner.frameworks, run by dlarena_runner.job_worker from files the host
    # writes (frameworks/job.py); None: ``module`` runs in dlarena.worker.
    job_module: str | None = None
    # What its verification checker computes in: float64 too (where `dlarena verify` compares gradients
    # between frameworks), or float32 only (pycaffe builds Net<float>; Caffe2's CPU kernels and DyNet
    # are float32): its float32 gradients are then held to the reference framework's float64 ones.
    check_precisions: tuple[str, ...] = ("float32", "float64")
    # The module of its capability probes (dlarena/probes): one function per probe it answers; None,
    # or a module without a probe's function: that probe is `unsupported` for it.
    probes: str | None = None
    # Whether its module builds TRANSFORMER_LAYERS (layer norm, self-attention, learned positions, ...).
    builds_transformers: bool = False

    def unsupported_reason(self, layer_types: set[str], scenario: str) -> str | None:
        """Why it cannot run a network with these layer types in this scenario; None when it can."""
        if scenario not in self.scenarios:
            return f"{self.name} does not run the {scenario!r} scenario (it runs {', '.join(self.scenarios)})"
        if layer_types & TRANSFORMER_LAYERS and not self.builds_transformers:
            return (f"dlarena's {self.name} module does not build the transformer layers (layer norm, self-attention,"
                    f" learned positions, a tied output); these frameworks do: {', '.join(transformer_builders())}")
        for layer_type in sorted(layer_types & set(self.unsupported_layers)):
            return f"{self.name} cannot express {layer_type}: {self.unsupported_layers[layer_type]}"
        return None

    def is_installed(self) -> bool:
        if self.environment is not None:
            from dlarena.environments import manage

            return manage.installed_record(self.environment) is not None
        return all(importlib.util.find_spec(name) is not None for name in self.imports)

    def unavailable_message(self) -> str:
        """Why it is unavailable here, with the command that makes it available."""
        if self.environment is not None:
            from dlarena.environments import environment_spec, manage

            try:
                manage.find_interpreter(environment_spec(self.environment))
            except manage.EnvironmentError_ as error:  # the setup command would fail: say why first
                return f"{self.name} runs in the managed environment {self.environment}, which is not set up: {error}"
            return (f"{self.name} runs in the managed environment {self.environment}, which is not set up "
                    f"(run `dlarena env setup {self.environment}`)")
        return f"{self.name} is not installed (pip install 'dlarena[{self.extra}]')"

    def versions(self) -> dict[str, str]:
        """Versions of its distributions, read from package metadata (nothing is imported); for a
        framework in a managed environment, from the environment's record, with the environment's
        identity (name, pin hash, Python, NumPy) so that a cell's key changes with it."""
        if self.environment is not None:
            from dlarena.environments import manage

            record = manage.installed_record(self.environment)
            if record is None:
                return {}
            packages = {name.lower(): version for name, version in record["packages"].items()}
            found = {dist: packages[dist.lower()] for dist in self.distributions if dist.lower() in packages}
            found[f"environment {self.environment}"] = manage.identity(record)
            return found
        import importlib.metadata  # a tenth of a second: not for `dlarena --help`, which reads this table

        found = {}
        for dist in self.distributions:
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return found


# Both MXNet frameworks (Module and Gluon): NaiveEngine runs every operator in the calling thread,
# exactly one engine thread (measured; the threaded engine keeps 6-8 threads, 1-2 of them busy, at one
# OMP thread); its allocator reports running out of memory as a C++ bad_alloc.
MXNET_VARIABLES = {"MXNET_ENGINE_TYPE": "NaiveEngine"}
MXNET_OOM_MARKERS = ("std::bad_alloc",)

# DyNet 2.1.2 (its Python API, dynet_graph.py): the layers it has no op or builder for, as the spec means them.
DYNET_UNSUPPORTED_LAYERS = {
    "AvgPool2D": "DyNet 2.1 has no average pooling op (its only pooling is maxpooling2d)",
    "GRU": "DyNet's GRUBuilder applies the reset gate before the recurrent product (tanh(W x + U (r*h) + b)) with "
           "one bias per gate; the spec's GRU (cuDNN form) multiplies a separate recurrent bias and U h by the "
           "reset gate",
}

FRAMEWORKS: dict[str, FrameworkInfo] = {
    info.name: info
    for info in (
        FrameworkInfo(
            name="torch",
            description="PyTorch eager mode: torch.nn modules and torch.optim",
            module="dlarena.frameworks.pytorch",
            imports=("torch",),
            distributions=("torch",),
            extra="torch",
            probes="dlarena.probes.torch_probes",
            precisions=TORCH_PRECISIONS,
            builds_transformers=True,
            scenarios=("train", "infer", "accuracy", "train-dp"),  # DistributedDataParallel
        ),
        FrameworkInfo(
            name="torch-compile",
            description="PyTorch through torch.compile (Inductor); compile time reported apart",
            module="dlarena.frameworks.pytorch",
            imports=("torch",),
            distributions=("torch",),
            extra="torch",
            probes="dlarena.probes.torch_probes",
            options={"compile": True},
            eager_counterpart="torch",
            precisions=TORCH_PRECISIONS,
            builds_transformers=True,
        ),
        FrameworkInfo(
            name="jax",
            description="JAX with Flax NNX and Optax; the train step under jax.jit",
            module="dlarena.frameworks.flax_nnx",
            imports=("jax", "flax", "optax"),
            distributions=("jax", "jaxlib", "flax", "optax"),
            extra="jax",
            probes="dlarena.probes.jax_probes",
            precisions=BFLOAT16_PRECISIONS,
            builds_transformers=True,
        ),
        FrameworkInfo(
            name="tensorflow",
            description="TensorFlow 2 without Keras: variables, tf.nn ops and tf.function graphs",
            module="dlarena.frameworks.tensorflow_native",
            imports=("tensorflow",),
            distributions=("tensorflow", "tensorflow-cpu"),
            extra="tensorflow",
            probes="dlarena.probes.tensorflow_probes",
            options={"xla": False},
            precisions=BFLOAT16_PRECISIONS,
            builds_transformers=True,
        ),
        FrameworkInfo(
            name="tensorflow-xla",
            description="The tensorflow framework with tf.function(jit_compile=True): compiled by XLA",
            module="dlarena.frameworks.tensorflow_native",
            imports=("tensorflow",),
            distributions=("tensorflow", "tensorflow-cpu"),
            extra="tensorflow",
            probes="dlarena.probes.tensorflow_probes",
            options={"xla": True},
            precisions=BFLOAT16_PRECISIONS,
            eager_counterpart="tensorflow",
            builds_transformers=True,
        ),
        *(
            FrameworkInfo(
                name=f"keras-{backend}",
                description=f"Keras 3 on its {backend} backend",
                module="dlarena.frameworks.keras3",
                imports=("keras", backend),
                distributions=("keras", *backend_distributions),
                extra="keras",
                probes="dlarena.probes.keras_probes",
                options={"backend": backend},
                precisions=BFLOAT16_PRECISIONS,
                builds_transformers=True,
            )
            for backend, backend_distributions in (
                ("jax", ("jax", "jaxlib")),
                ("torch", ("torch",)),
                ("tensorflow", ("tensorflow", "tensorflow-cpu")),
            )
        ),
        FrameworkInfo(
            name="onnxruntime",
            description="ONNX Runtime, CPU execution provider, graph optimisations on (inference only)",
            module="dlarena.frameworks.onnx_runtime",
            imports=("onnx", "onnxruntime"),
            distributions=("onnx", "onnxruntime"),
            extra="onnxruntime",
            probes="dlarena.probes.onnxruntime_probes",
            scenarios=("infer",),
            builds_transformers=True,
        ),
        FrameworkInfo(
            name="openvino",
            description="OpenVINO, CPU plugin, the onnxruntime framework's ONNX graph; float32 forced (inference only)",
            module="dlarena.frameworks.openvino_runtime",
            imports=("onnx", "openvino"),
            distributions=("onnx", "openvino"),
            extra="openvino",
            scenarios=("infer",),
            builds_transformers=True,
        ),
        FrameworkInfo(
            name="tinygrad",
            description="tinygrad on its CPU device (kernels compiled by clang): tinygrad.nn, nn.optim, TinyJit steps",
            module="dlarena.frameworks.tinygrad_nn",
            imports=("tinygrad",),
            distributions=("tinygrad",),
            extra="tinygrad",
        ),
        FrameworkInfo(
            name="pytensor",
            description="PyTensor 3 (Theano's successor): a symbolic graph, pytensor.function with updates, "
                        "scan; compiled by Numba",
            module="dlarena.frameworks.pytensor_graph",
            imports=("pytensor",),
            distributions=("pytensor", "numba"),
            extra="pytensor",
            unsupported_layers={name: "PyTensor 3 removed Theano's nnet.conv2d and signal.pool (with the nnet "
                                      "module); it has no 2-D convolution or pooling over channels"
                                for name in ("Conv2D", "MaxPool2D", "AvgPool2D")},
        ),
        # The frameworks of the published comparisons that need NumPy < 1.24: one managed environment.
        FrameworkInfo(
            name="theano",
            description="Theano 1.0.5: a symbolic graph, theano.function with updates, scan for recurrent layers",
            module="dlarena.frameworks.theano_graph",
            imports=("theano",),
            distributions=("theano", "numpy"),
            extra="",
            environment="legacy",
        ),
        FrameworkInfo(
            name="lasagne",
            description="Lasagne 0.1 on Theano: lasagne.layers and lasagne.updates",
            module="dlarena.frameworks.lasagne_layers",
            imports=("lasagne", "theano"),
            distributions=("lasagne", "theano", "numpy"),
            extra="",
            environment="legacy",
            unsupported_layers={"GRU": "Lasagne 0.1's GRULayer adds one bias per gate outside the reset gate "
                                       "(c = tanh(W_xc x + r*(W_hc h) + b_c)); the spec's GRU (cuDNN form) "
                                       "multiplies a recurrent bias b_hn by the reset gate, which Lasagne's GRU "
                                       "has no parameter for"},
        ),
        FrameworkInfo(
            name="keras2-theano",
            description="Keras 2.3.1 on its Theano backend",
            module="dlarena.frameworks.keras2",
            imports=("keras", "theano"),
            distributions=("keras", "theano", "numpy"),
            extra="",
            environment="legacy",
            options={"backend": "theano"},
            variables={"KERAS_BACKEND": "theano"},
        ),
        FrameworkInfo(
            name="mxnet",
            description="MXNet 1.9.1, symbolic Module API (as DLBench and Karmanov's MXNet rows)",
            module="dlarena.frameworks.mxnet_module",
            imports=("mxnet",),
            distributions=("mxnet", "numpy"),
            extra="",
            environment="legacy",
            variables=MXNET_VARIABLES,
            oom_markers=MXNET_OOM_MARKERS,
        ),
        FrameworkInfo(
            name="gluon",
            description="MXNet 1.9.1 Gluon, hybridized",
            module="dlarena.frameworks.mxnet_gluon",
            imports=("mxnet",),
            distributions=("mxnet", "numpy"),
            extra="",
            environment="legacy",
            variables=MXNET_VARIABLES,
            oom_markers=MXNET_OOM_MARKERS,
        ),
        FrameworkInfo(
            name="chainer",
            description="Chainer 7.8.1, define-by-run: chainer.links and chainer.optimizers",
            module="dlarena.frameworks.chainer_links",
            imports=("chainer",),
            distributions=("chainer", "numpy"),
            extra="",
            environment="legacy",
        ),
        FrameworkInfo(
            name="paddle",
            description="PaddlePaddle 3, dynamic graph: paddle.nn layers and paddle.optimizer",
            module="dlarena.frameworks.paddle_dygraph",
            imports=("paddle",),
            distributions=("paddlepaddle", "numpy"),
            extra="",
            environment="paddle",
            # It logs a "No ccache found" warning at import (harmless: ccache only speeds its own builds).
            variables={"GLOG_minloglevel": "2"},
        ),
        # Caffe2 as torch 1.10.2 carries it (its last wheels with Caffe2), on Python 3.9: a job worker.
        # No variables of its own: its FC and Conv run MKL GEMMs on every core unless limited (measured:
        # 2 busy threads on 2 cores with nothing set); the worker's OMP_NUM_THREADS/MKL_NUM_THREADS and
        # the module's GlobalInit flags (--caffe2_omp_num_threads, --caffe2_mkl_num_threads) keep one.
        FrameworkInfo(
            name="caffe2",
            check_precisions=("float32",),
            description="Caffe2 (torch 1.10.2): model_helper and brew, caffe2.python.optimizer, workspace.RunNet",
            module="dlarena_runner.frameworks.caffe2_brew",
            imports=("caffe2",),
            distributions=("torch", "numpy"),
            extra="",
            environment="caffe2",
            job_module="dlarena_runner.frameworks.caffe2_brew",
        ),
        # CNTK's newest wheel is for Python 3.6: its workers run dlarena_runner.job_worker there.
        FrameworkInfo(
            name="cntk",
            description="CNTK 2.7: cntk.layers, a cntk.learners learner, Trainer.train_minibatch",
            module="dlarena_runner.frameworks.cntk_layers",
            imports=("cntk",),
            distributions=("cntk", "numpy"),
            extra="",
            environment="cntk",
            job_module="dlarena_runner.frameworks.cntk_layers",
            variables=CNTK_VARIABLES,
            unsupported_layers={"GRU": CNTK_GRU_REASON},
        ),
        FrameworkInfo(
            name="keras2-cntk",
            description="Keras 2.3.1 on its CNTK backend (Karmanov's \"Keras (CNTK)\")",
            module="dlarena_runner.frameworks.keras2_cntk",
            imports=("keras", "cntk"),
            distributions=("keras", "cntk", "numpy"),
            extra="",
            environment="cntk",
            job_module="dlarena_runner.frameworks.keras2_cntk",
            variables={**CNTK_VARIABLES, "KERAS_BACKEND": "cntk"},
        ),
        # DyNet 2.1.2's newest wheel is for Python 3.8: its workers run dlarena_runner.job_worker there.
        # Its memory pools and seed are set by the module before import (dynet_config: DyNet reads
        # no environment variable); its CPU kernels run in the calling thread.
        FrameworkInfo(
            name="dynet",
            check_precisions=("float32",),
            description="DyNet 2.1.2: a ParameterCollection, a graph renewed per step (dy.renew_cg), dynet trainers",
            module="dlarena_runner.frameworks.dynet_graph",
            imports=("dynet",),
            distributions=("dynet", "numpy"),
            extra="",
            environment="dynet",
            job_module="dlarena_runner.frameworks.dynet_graph",
            # Not the accuracy scenario: its module keeps each batch as a lookup table in DyNet's
            # memory (the binding converts 0.6 us a float, so timed steps read tables made once), and
            # an epoch of fresh batches would add tables that DyNet frees only with the collection.
            scenarios=("train", "infer"),
            unsupported_layers=DYNET_UNSUPPORTED_LAYERS,
        ),
        # BVLC Caffe 1.0 from Debian bullseye's packages (no pip route): pycaffe on Python 3.9.
        FrameworkInfo(
            name="caffe",
            check_precisions=("float32",),
            description="BVLC Caffe 1.0: prototxt from caffe.NetSpec, Caffe's solver, solver.step",
            module="dlarena_runner.frameworks.caffe_netspec",
            imports=("caffe",),
            distributions=("numpy",),  # pycaffe is a Debian package, not a distribution pip knows
            extra="",
            environment="caffe",
            job_module="dlarena_runner.frameworks.caffe_netspec",
            # Its threads are OpenBLAS's (OPENBLAS_NUM_THREADS, set by the worker); glog's INFO and
            # WARNING lines (every layer's set-up) would fill the worker's stderr.
            variables={"GLOG_minloglevel": "2"},
            unsupported_layers={"GRU": "Caffe 1.0 has no GRU layer (its recurrent layers are RNN and LSTM)"},
        ),
    )
}


# Test-only frameworks that inject faults (dlarena/frameworks/fault.py); never shown to users.
FAULT_FRAMEWORKS_VARIABLE = "DLARENA_FAULT_FRAMEWORKS"
# The faults that frameworks/fault.py injects (listed here so that this table imports no NumPy).
FAULTS: tuple[str, ...] = (
    "none", "raise", "hang", "segfault", "exit", "unsupported", "unavailable", "wrong", "grow", "oom-error", "gate",
    "threads",
)
# The A/B test's known difference (issue 17: a framework 10% slower than torch must be found slower).
CALIBRATION_SLOWDOWN = 0.10
if os.environ.get(FAULT_FRAMEWORKS_VARIABLE) == "1":
    for _fault in FAULTS:
        FRAMEWORKS[f"fault-{_fault}"] = FrameworkInfo(
            name=f"fault-{_fault}",
            description=f"test-only: injects the fault {_fault!r}",
            module="dlarena.frameworks.fault",
            imports=("numpy",),
            distributions=("numpy",),
            extra="test",
            options={"fault": _fault},
            probes="dlarena.probes.fault_probes",
        )
    # Not a fault: a NumPy perceptron on the old-interpreter path (job.py, dlarena_runner.job_worker),
    # so that the tests drive that path with no framework installed. Prefixed as the others are, so
    # that it is never taken for a real framework.
    FRAMEWORKS["fault-job"] = FrameworkInfo(
        name="fault-job", description="test-only: a NumPy perceptron run by the job worker",
        module="dlarena_runner.frameworks.numpy_mlp", imports=("numpy",), distributions=("numpy",), extra="test",
        job_module="dlarena_runner.frameworks.numpy_mlp",
        unsupported_layers={name: "the test-only NumPy perceptron has Dense, Activation, Dropout and Flatten"
                            for name in ("Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "BatchNorm",
                                         "Embedding", "LSTM", "GRU", "Residual", "Concat")},
    )


    # Not faults either: torch under a second name, and torch made exactly CALIBRATION_SLOWDOWN slower
    # (frameworks/slowed.py), so that benchmarks/calibration.py counts dlarena's false verdicts (A/A)
    # and the real differences it finds (A/B).
    for _name, _slowdown, _what in (("fault-torch-twin", 0.0, "torch under a second name"),
                                    ("fault-torch-slower", CALIBRATION_SLOWDOWN, "torch with every step 10% longer")):
        FRAMEWORKS[_name] = FrameworkInfo(
            name=_name, description=f"test-only: {_what}", module="dlarena.frameworks.slowed", imports=("torch",),
            distributions=("torch",), extra="test", options={"slowdown": _slowdown}, builds_transformers=True,
        )


def transformer_builders() -> list[str]:
    """The frameworks whose module builds the transformer layers, test-only ones left out."""
    return [name for name, info in FRAMEWORKS.items() if info.builds_transformers and not name.startswith("fault-")]


def default_frameworks() -> tuple[str, ...]:
    """What a suite or `dlarena verify` runs when no framework is named: those of dlarena's own
    environment. A framework in a managed environment runs when named (`--frameworks theano,...`),
    so that a machine's results do not change shape with the environments it happens to have."""
    return tuple(name for name, info in FRAMEWORKS.items() if info.environment is None)


def precision_support(names: tuple[str, ...] | list[str] | None = None) -> str:
    """What each framework runs, grouped: `torch, jax: float32; other: float32, float16` (all by default)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name in names or list(FRAMEWORKS):
        groups.setdefault(framework_info(name).precisions, []).append(name)
    return "; ".join(f"{', '.join(members)}: {', '.join(precisions)}" for precisions, members in groups.items())


def framework_info(name: str) -> FrameworkInfo:
    try:
        return FRAMEWORKS[name]
    except KeyError:
        raise UnknownNameError("framework", name, FRAMEWORKS) from None


def load_backend(name: str, threads: int) -> Backend:
    """Import the framework (only a worker process calls this) and return its configured backend."""
    info = framework_info(name)
    module = importlib.import_module(info.module)
    backend: Backend = module.Backend(threads=threads, **info.options)
    return backend
