"""Every capability probe dlarena knows, as data: its question, where it runs, and which published
rating it replaces. Imports nothing heavier than itself: the command line reads it for its help.

A probe that runs in a worker is one function per framework, named after the probe (``custom-layer``
-> ``custom_layer``), in the module the framework's registry entry names as ``probes``; a framework
whose module lacks the function answers ``unsupported`` (probes/runner.py), never a crash. A probe
marked ``host`` is answered without a worker: from what dlarena already stores (verify's verdicts)
or from the package index (ecosystem).
"""

from __future__ import annotations

from dataclasses import dataclass

from dlarena.errors import UnknownNameError

# Where a probe is answered.
WORKER = "worker"  # a worker process of the framework, as a cell
HOST = "host"  # dlarena's own process, from stored results or the package index

# A probe's outcomes: pass (with its figures), fail (the error or the difference that failed), or why
# it could not be asked (the statuses a cell has for the same reasons).
OUTCOMES = ("pass", "fail", "unsupported", "unavailable", "timeout", "oom")

# The published ratings the probes replace, as each review named its column.
ZER0N = "zer0n/deepframeworks"
SVDS = "SVDS review"


@dataclass(frozen=True)
class Probe:
    name: str
    question: str
    category: str  # modelling, deployment, resources, ecosystem
    replaces: tuple[str, ...]  # "<review>: <its column>"
    figure: str  # the key figure a passing probe shows in the matrix (a key of its figures)
    where: str = WORKER
    timeout_s: float = 300.0  # as a small cell's (plan/timeouts.py): an import, a build, a few steps
    # Whether its worker is pinned to its threads' cores as a cell's is. thread-limit is not: it asks
    # whether the framework keeps to one thread by its thread controls alone, with every core allowed
    # (a worker pinned to one core cannot use two, whatever the framework does).
    pinned: bool = True

    @property
    def function(self) -> str:
        """The name of its function in a framework's probe module."""
        return self.name.replace("-", "_")


PROBES: dict[str, Probe] = {probe.name: probe for probe in (
    Probe("networks", "which catalogue networks does dlarena verify it computing as the NumPy oracle does?",
          "modelling", (f"{ZER0N}: modelling capability (common networks)", f"{SVDS}: CNN modelling, RNN modelling"),
          "verified", where=HOST),
    Probe("custom-layer", "does a new activation written in its own Python API get a correct gradient from its"
          " autodiff, no C++?", "modelling", (f"{ZER0N}: modelling capability (new layer types)",),
          "gradient_error"),
    Probe("dynamic-loop", "does a loop whose step count depends on the data run eagerly and in its graph or"
          " compiled mode, with gradients through it?", "modelling",
          (f"{ZER0N}: modelling capability (dynamic control flow)",), "error"),
    Probe("variable-length", "does an LSTM over a padded batch of sequences of different lengths (masking or"
          " packing) give each sequence's own last state?", "modelling",
          (f"{ZER0N}: modelling capability", f"{SVDS}: RNN modelling"), "error"),
    Probe("higher-order", "does it compute a Hessian-vector product of a small network's loss?", "modelling",
          (f"{ZER0N}: modelling capability",), "hvp_error"),
    Probe("export-onnx", "does it (or its ecosystem's exporter) export a CNN and an LSTM workload to ONNX that ONNX"
          " Runtime runs with its own outputs?", "deployment",
          (f"{ZER0N}: model deployment (other platforms)", f"{ZER0N}: cross-platform"), "error", timeout_s=600.0),
    Probe("save-load", "does its native format save a CNN and an LSTM workload that a fresh process loads with the"
          " same outputs?", "deployment", (f"{ZER0N}: model deployment",), "load_s"),
    Probe("aot-export", "does it write an ahead-of-time artefact (no Python model code) that reloads and runs with"
          " the same outputs?", "deployment", (f"{ZER0N}: model deployment (C++)", f"{ZER0N}: interfaces"),
          "error", timeout_s=600.0),
    Probe("mobile", "does a CNN and an LSTM workload convert to an on-device runtime installable from PyPI, whose"
          " interpreter here gives the same outputs?", "deployment", (f"{ZER0N}: model deployment (mobile)",),
          "error", timeout_s=900.0),  # ExecuTorch lowers lstm32-small in 86 s idle, 505 s measured under load
    Probe("cold-start", "how long from a fresh process to the first output of a saved CNN: interpreter, import,"
          " load, first call?", "deployment", (f"{ZER0N}: performance (start-up)", f"{ZER0N}: architecture"),
          "cold_start_s"),
    Probe("multi-device", "does one data-parallel training step over two devices (processes or logical CPU"
          " devices) give the loss and gradients of one device on the same global batch?", "deployment",
          (f"{SVDS}: multi-GPU support",), "gradient_error"),
    Probe("thread-limit", "given one thread by its own controls, with every core allowed, does it keep to one?",
          "resources", (f"{ZER0N}: performance", f"{SVDS}: speed"), "parallel_share", pinned=False),
    Probe("ecosystem", "what is its latest release on PyPI and when was it published, how many releases came in"
          " the last 12 months, and for which CPython versions and platforms are there wheels?", "ecosystem",
          (f"{ZER0N}: ecosystem", f"{SVDS}: community"), "latest", where=HOST),
)}


def probe_info(name: str) -> Probe:
    try:
        return PROBES[name]
    except KeyError:
        raise UnknownNameError("probe", name, sorted(PROBES)) from None
