"""The timings the studies published, exactly as printed, for the report to set beside measured ones.

Every figure is copied from the project's reference notes (``reference/workloads.md``: section 2.5 for
Karmanov et al., section 4 for Chintala's convnet-benchmarks, section 5 for zer0n), which cite the
repository and commit each table was read from. A figure keeps its unit, the hardware and versions the
study names, and the table it comes from; ``printed`` is the text as printed (``??`` where the study
printed no figure, whose ``value`` is then None).

Figures of one ``series`` were measured alike on one machine in one run of the study (a column of a
table): ratios between frameworks are taken inside a series only. Seconds do not carry over to another
machine or another decade of frameworks; ratios between frameworks carry over better.

``framework`` is dlarena's name for what the study measured (the mapping of frameworks/studies.py),
or the key of an unavailable record there (``torch7``, ``knet``, ``r-keras``) where dlarena cannot
run it. ``SUCCESSORS`` names the framework measured in place of one that cannot run, which the report
labels as such.

Shi et al. and Shatnawi et al. have no figures here: ``NO_FIGURES`` says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

KARMANOV_SOURCE = "ilkarman/DeepLearningFrameworks README.md at 671e2a0 (2018-06-19)"
CHINTALA_SOURCE = "soumith/convnet-benchmarks README.md at b458aab (2017-06-09)"
ZER0N_SOURCE = "zer0n/deepframeworks README.md at b8113bd (2016-12-06), Performance, Single-GPU"
# The README at 0155fd4 says the K80 column is half a K80 (one GK210) on an Azure NC6.
KARMANOV_K80 = "half an NVIDIA K80 (one GK210, Azure NC6)"
KARMANOV_P100 = "NVIDIA P100"
CHINTALA_MACHINE = "Intel i7-5930K + NVIDIA Titan X (Maxwell)"
ZER0N_MACHINE = "NVIDIA Titan X"

# A framework a study measured that dlarena cannot run, and the framework dlarena measures in its
# place: PyTorch continues Torch7's C/CUDA kernels (TH, THNN, THC) under a Python front end. The report
# writes the pair (`torch (for Torch7)`), never the successor's name alone.
SUCCESSORS: dict[str, str] = {"torch7": "torch"}

# Studies that published timings dlarena has no copy of, and why (reference/workloads.md).
NO_FIGURES: dict[str, str] = {
    "shi2016": ("the body of Shi et al.'s paper (arXiv 1608.07249) could not be retrieved, only its abstracts "
                "(reference/workloads.md section 1.0), so its timing tables are not copied here"),
    "shatnawi2017": ("only the abstract and keywords of Shatnawi et al.'s paper could be retrieved "
                     "(reference/workloads.md section 3), so its timing tables are not copied here"),
}


@dataclass(frozen=True)
class Figure:
    """One published timing."""

    study: str  # the study's key (frameworks/studies.STUDIES, the suites' names)
    source: str  # where it was read
    table: str  # which table of the source, as it is titled there
    series: str  # the column: figures measured alike on one machine; ratios are taken inside one
    hardware: str
    versions: str  # the software versions the table names for this figure; "" where it names none
    workload: str  # dlarena's workload (spec/catalogue.py)
    scenario: str | None  # the dlarena scenario whose time it is set beside; None: dlarena has none
    batch_size: int
    framework: str  # dlarena's name, or the key of an unavailable record (frameworks/studies.py)
    named: str  # the framework as the study wrote it
    printed: str  # the figure as printed
    value: float | None  # the printed figure as a number; None where the study printed none
    unit: str
    # A figure that times a whole training run of this many epochs (wall clock); the training time of
    # an accuracy cell measures the same. None: a figure per step or per image.
    epochs: int | None = None
    device: str = "cuda"  # every published figure here is a GPU's
    notes: str = ""

    @property
    def key(self) -> tuple[str, str, str, str | None, int, str, str]:
        return (self.study, self.workload, self.framework, self.scenario, self.batch_size, self.series, self.table)


def _number(printed: str) -> float | None:
    """The printed figure as a number; `??`, `?` and a dash are a figure the study did not give."""
    try:
        return float(printed)
    except ValueError:
        return None


def _table(
    study: str, source: str, table: str, unit: str, workload: str, scenario: str | None, batch_size: int,
    series: Sequence[tuple[str, str, str]], rows: Sequence[tuple[str, str, Sequence[str]]],
    epochs: int | None = None, notes: str = "",
) -> list[Figure]:
    """A printed table: ``series`` are its columns (name, hardware, versions), ``rows`` its lines
    (the study's name, dlarena's name, one printed figure per column)."""
    return [
        Figure(study=study, source=source, table=table, series=name, hardware=hardware, versions=versions,
               workload=workload, scenario=scenario, batch_size=batch_size, framework=framework, named=named,
               printed=printed, value=_number(printed), unit=unit, epochs=epochs, notes=notes)
        for named, framework, printed_row in rows
        for (name, hardware, versions), printed in zip(series, printed_row, strict=True)
    ]


_KARMANOV_NOTES = ("GPU, CUDA and cuDNN as the column says; the README names no framework versions. "
                   "Wall clock over the whole loop, host-to-device copies included (reference section 2.2).")


def _karmanov() -> list[Figure]:
    cnn_series = (("K80", KARMANOV_K80, "CUDA 8, cuDNN 6"), ("P100", KARMANOV_P100, "CUDA 8, cuDNN 6"))
    series = (("K80", KARMANOV_K80, ""), ("P100", KARMANOV_P100, ""))
    cnn = _table(
        "karmanov2017", KARMANOV_SOURCE, "CNN training time (s), 10 epochs", "s for 10 epochs", "karmanov-cnn",
        "train", 64, cnn_series, epochs=10, notes=_KARMANOV_NOTES, rows=(
            ("Caffe2", "caffe2", ("148", "54")),
            ("Chainer", "chainer", ("162", "69")),
            ("CNTK", "cntk", ("163", "53")),
            ("MXNet (Gluon)", "gluon", ("152", "57")),
            ("Keras (CNTK)", "keras2-cntk", ("194", "76")),
            ("Keras (TF)", "keras-tensorflow", ("241", "76")),
            ("Keras (Theano)", "keras2-theano", ("269", "93")),
            ("TensorFlow", "tensorflow", ("173", "57")),
            ("Lasagne", "lasagne", ("253", "65")),
            ("MXNet (Module)", "mxnet", ("145", "52")),
            ("PyTorch", "torch", ("169", "51")),
            ("Knet", "knet", ("159", "??")),
            ("R-Keras (TF)", "r-keras", ("205", "72")),
        ))
    resnet = _table(
        "karmanov2017", KARMANOV_SOURCE, "ResNet-50 feature extraction, seconds per 1000 images",
        "s per 1000 images", "resnet50", "infer", 32, series,
        notes=("The study's ResNet-50 stops at the 2048-wide average pool (its final FC removed); dlarena's "
               "resnet50 keeps the FC 2048->1000. Batch 32, 1280 images after one untimed pass."),
        rows=(
            ("Caffe2", "caffe2", ("14.1", "7.9")),
            ("Chainer", "chainer", ("9.3", "2.7")),
            ("CNTK", "cntk", ("8.5", "1.6")),
            ("Gluon", "gluon", ("–", "1.7")),
            ("Keras (CNTK)", "keras2-cntk", ("21.7", "5.9")),
            ("Keras (TF)", "keras-tensorflow", ("10.2", "2.9")),
            ("TF", "tensorflow", ("6.5", "1.8")),
            ("MXNet", "mxnet", ("7.7", "1.6")),
            ("PyTorch", "torch", ("7.7", "1.9")),
            ("Knet", "knet", ("6.3", "?")),
            ("R-Keras (TF)", "r-keras", ("17", "7.4")),
        ))
    gru = _table(
        "karmanov2017", KARMANOV_SOURCE, "RNN (GRU) training time (s)", "s for 3 epochs", "karmanov-gru", "train",
        64, series, epochs=3,
        notes=("3 epochs (common/params_lstm.py). The README's cuDNN column says which used cuDNN's GRU: all "
               "but Keras (CNTK)."),
        rows=(
            ("CNTK", "cntk", ("32", "15")),
            ("Keras (CNTK)", "keras2-cntk", ("86", "53")),
            ("Keras (TF)", "keras-tensorflow", ("35", "26")),
            ("MXNet", "mxnet", ("29", "24")),
            ("PyTorch", "torch", ("31", "16")),
            ("TF", "tensorflow", ("30", "22")),
            ("Knet", "knet", ("29", "??")),
            ("R-Keras (TF)", "r-keras", ("35", "25")),
        ))
    return cnn + resnet + gru


_CHINTALA_NETWORKS = (  # (dlarena workload, the README's row, batch, Torch total/forward/backward, TF's)
    ("alexnet-owt", "AlexNet", 128, ("81", "27", "53"), ("81", "26", "55")),
    ("overfeat", "OverFeat", 128, ("268", "94", "174"), ("279", "90", "189")),
    ("vgg-a", "VGG-A", 64, ("529", "162", "366"), ("540", "158", "382")),
    ("googlenet", "GoogLeNet", 128, ("470", "130", "340"), ("445", "135", "310")),
)
# The README's three figures per network, and the dlarena scenario each is set beside: its forward
# pass is an inference step; its forward + backward has no weight update, which dlarena's training
# step adds; its backward alone has no dlarena counterpart.
_CHINTALA_MEASURES = (("total (forward + backward)", "train"), ("forward", "infer"), ("backward", None))
_CHINTALA_NOTES = {
    "train": ("Mean of 10 steps after 10 dry runs of a forward and a backward pass, without the weight update that "
              "dlarena's training step adds (reference section 4)."),
    "infer": "Mean of 10 forward passes after 10 dry runs (reference section 4).",
    None: "The backward pass alone, which dlarena does not time apart (reference section 4).",
}


def _chintala() -> list[Figure]:
    figures = []
    for workload, row, batch, torch, tensorflow in _CHINTALA_NETWORKS:
        for index, (measure, scenario) in enumerate(_CHINTALA_MEASURES):
            figures += _table(
                "chintala2015", CHINTALA_SOURCE, f"{row}: {measure}, ms", "ms per mini-batch", workload, scenario,
                batch, (("Titan X", CHINTALA_MACHINE, ""),),
                notes=_CHINTALA_NOTES[scenario],
                rows=(("CuDNN[R4]-fp32 (Torch)", "torch7", (torch[index],)),
                      ("TensorFlow", "tensorflow", (tensorflow[index],))),
            )
    return figures


def _zer0n() -> list[Figure]:
    notes = ("Latency of one full forward + backward pass; the batch of 128 is inferred (the README does not "
             "state it; its Torch figures equal convnet-benchmarks' batch-128 ones), reference section 5.")
    figures = []
    for workload, row, tf_06, tf_08, torch in (("alexnet-owt", "AlexNet", "292", "97", "81"),
                                               ("googlenet", "Inception v1", "1237", "518", "470")):
        table = f"{row}: latency (ms) of a forward-backward pass"
        figures += _table(
            "zer0n2016", ZER0N_SOURCE, table, "ms per mini-batch", workload, "train", 128,
            (("Titan X, zer0n's runs", ZER0N_MACHINE, ""),), notes=notes,
            rows=(("TF 0.8 (his run)", "tensorflow", (tf_08,)), ("Torch FP32 (his run)", "torch7", (torch,))),
        )
        # The reference column, soumith's convnet-benchmarks README at efb3d93 (2016-01-06): another
        # machine run and TensorFlow version, so a series of its own.
        figures += _table(
            "zer0n2016", ZER0N_SOURCE, table, "ms per mini-batch", workload, "train", 128,
            (("Titan X, convnet-benchmarks at efb3d93", ZER0N_MACHINE, ""),), notes=notes,
            rows=(("TF 0.6 (ref)", "tensorflow", (tf_06,)),),
        )
    return figures


# Versions that a table gives in its name for a framework rather than in a column heading.
_NAMED_VERSIONS = {
    "CuDNN[R4]-fp32 (Torch)": "Torch7, cuDNN R4, fp32",
    "TF 0.8 (his run)": "TensorFlow 0.8",
    "TF 0.6 (ref)": "TensorFlow 0.6",
    "Torch FP32 (his run)": "Torch7, fp32",
}


def _versioned(figures: Sequence[Figure]) -> tuple[Figure, ...]:
    return tuple(replace(figure, versions=", ".join(filter(None, (figure.versions, _NAMED_VERSIONS.get(figure.named)))))
                 for figure in figures)


FIGURES: tuple[Figure, ...] = _versioned([*_karmanov(), *_chintala(), *_zer0n()])

# The framework a study's ratios are taken against where it was measured: one every table of the
# study has a figure for (Karmanov's PyTorch is in all three tables and both columns), and not a
# successor standing in (TensorFlow, not Torch7, for convnet-benchmarks and zer0n).
REFERENCE_FRAMEWORKS: dict[str, str] = {
    "karmanov2017": "torch",
    "chintala2015": "tensorflow",
    "zer0n2016": "tensorflow",
}


def figures_for(workload: str, batch_size: int) -> list[Figure]:
    """The published figures of ``workload`` at ``batch_size``, in the order above."""
    return [figure for figure in FIGURES if figure.workload == workload and figure.batch_size == batch_size]


def measured_name(framework: str) -> str:
    """The dlarena framework whose measurement is set beside a published ``framework``."""
    return SUCCESSORS.get(framework, framework)
