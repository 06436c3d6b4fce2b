"""What no probe can measure on this machine: the languages a framework has official bindings for, and
its licence. Stated, not measured: each entry names its source and the date it was checked, and the
capability matrix marks these columns as stated (zer0n's "interfaces" rating; SVDS's "languages").

The licence is the project's own (SPDX), as its LICENSE file and its wheel's metadata give it;
tests/test_capabilities.py checks it against the metadata of every distribution installed here. The
languages are those the project documents as its own APIs (community bindings left out).
"""

from __future__ import annotations

from dataclasses import dataclass

CHECKED = "2026-12-02"


@dataclass(frozen=True)
class Stated:
    project: str
    distribution: str  # the wheel whose metadata states the licence
    languages: tuple[str, ...]
    licence: str  # SPDX identifier
    source: str
    checked: str = CHECKED
    release: str = ""  # the releases the entry covers, as a version prefix ("": every release)


_PYTORCH = Stated("PyTorch", "torch", ("Python", "C++"), "BSD-3-Clause",
                  "https://github.com/pytorch/pytorch/blob/main/LICENSE; https://pytorch.org/cppdocs/")
_TENSORFLOW = Stated("TensorFlow", "tensorflow-cpu", ("Python", "C", "C++", "Java", "JavaScript"), "Apache-2.0",
                     "https://github.com/tensorflow/tensorflow/blob/master/LICENSE; https://www.tensorflow.org/api_docs")
_KERAS3 = Stated("Keras 3", "keras", ("Python",), "Apache-2.0", "https://github.com/keras-team/keras/blob/master/LICENSE")
_KERAS2 = Stated("Keras 2.3", "keras", ("Python",), "MIT",
                 "https://github.com/keras-team/keras/blob/2.3.1/LICENSE (MIT until 2.3; Apache-2.0 from 2.4)",
                 release="2.3")
_MXNET = Stated("Apache MXNet (retired to the Apache Attic in 2023)", "mxnet",
                ("Python", "C++", "Scala", "Java", "Julia", "R", "Perl", "Clojure"), "Apache-2.0",
                "https://github.com/apache/mxnet/blob/master/LICENSE; https://mxnet.apache.org/versions/1.9.1/api")

STATED: dict[str, Stated] = {
    "torch": _PYTORCH,
    "torch-compile": _PYTORCH,
    "jax": Stated("JAX", "jax", ("Python",), "Apache-2.0", "https://github.com/jax-ml/jax/blob/main/LICENSE"),
    "tensorflow": _TENSORFLOW,
    "tensorflow-xla": _TENSORFLOW,
    "keras-jax": _KERAS3,
    "keras-torch": _KERAS3,
    "keras-tensorflow": _KERAS3,
    "onnxruntime": Stated("ONNX Runtime", "onnxruntime",
                          ("Python", "C", "C++", "C#", "Java", "JavaScript", "Objective-C"), "MIT",
                          "https://github.com/microsoft/onnxruntime/blob/main/LICENSE; https://onnxruntime.ai/docs/api/"),
    "openvino": Stated("OpenVINO", "openvino", ("Python", "C", "C++", "JavaScript"), "Apache-2.0",
                       "https://github.com/openvinotoolkit/openvino/blob/master/LICENSE;"
                       " https://docs.openvino.ai/2026/api/api_reference.html"),
    "tinygrad": Stated("tinygrad", "tinygrad", ("Python",), "MIT",
                       "https://github.com/tinygrad/tinygrad/blob/master/LICENSE"),
    "pytensor": Stated("PyTensor", "pytensor", ("Python",), "BSD-3-Clause",
                       "https://github.com/pymc-devs/pytensor/blob/main/LICENSE.txt"),
    "theano": Stated("Theano", "Theano", ("Python",), "BSD-3-Clause",
                     "https://github.com/Theano/Theano/blob/master/doc/LICENSE.txt"),
    "lasagne": Stated("Lasagne", "Lasagne", ("Python",), "MIT", "https://github.com/Lasagne/Lasagne/blob/master/LICENSE"),
    "keras2-theano": _KERAS2,
    "keras2-cntk": _KERAS2,
    "mxnet": _MXNET,
    "gluon": _MXNET,
    "chainer": Stated("Chainer (maintenance only since 2019)", "chainer", ("Python",), "MIT",
                      "https://github.com/chainer/chainer/blob/master/LICENSE"),
    "paddle": Stated("PaddlePaddle", "paddlepaddle", ("Python", "C++", "C", "Go"), "Apache-2.0",
                     "https://github.com/PaddlePaddle/Paddle/blob/develop/LICENSE;"
                     " https://www.paddlepaddle.org.cn/inference/master/api_reference/index.html"),
    "caffe2": Stated("Caffe2 (inside PyTorch 1.x)", "torch", ("Python", "C++"), "BSD-3-Clause",
                     "https://github.com/pytorch/pytorch/blob/v1.10.2/LICENSE", release="1."),
    "cntk": Stated("CNTK (no release since 2019)", "cntk", ("Python", "C++", "C#", "Java", "BrainScript"), "MIT",
                   "https://github.com/microsoft/CNTK/blob/master/LICENSE.md;"
                   " https://learn.microsoft.com/en-us/cognitive-toolkit/"),
    "dynet": Stated("DyNet", "dyNET", ("C++", "Python"), "Apache-2.0", "https://github.com/clab/dynet/blob/master/LICENSE"),
    "caffe": Stated("Caffe (BVLC; last release 2017)", "caffe", ("C++", "Python", "MATLAB"), "BSD-2-Clause",
                    "https://github.com/BVLC/caffe/blob/master/LICENSE"),
}


def stated(framework: str) -> Stated | None:
    return STATED.get(framework)
