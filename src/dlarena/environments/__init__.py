"""Environments dlarena manages: an interpreter and exact pins for frameworks that cannot share
dlarena's own (Theano and MXNet need NumPy < 1.24; PaddlePaddle brings its own NumPy and protobuf).

Each is declared here as data; ``manage`` creates, lists and removes them under the cache folder,
and the executor launches a framework's workers with its environment's interpreter. Like asv's
``asv_runner``, only the worker side runs there: dlarena's package is linked into the environment
(the same code as the host's, never a stale copy), and nothing but JSON crosses the boundary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources

from dlarena.errors import UnknownNameError


@dataclass(frozen=True)
class EnvironmentSpec:
    name: str
    description: str
    # Interpreter versions it can be built on, (major, minor) inclusive: the newest present is taken.
    python: tuple[tuple[int, int], tuple[int, int]]
    constraints: str  # a file in this package (or an absolute path): the exact version of every package
    packages: tuple[str, ...]  # what pip installs first (versions from the constraints file)
    # Further pip steps, each its arguments after `pip install`: packages that build from source
    # against what the first step installed (Chainer needs the environment's setuptools < 81).
    steps: tuple[tuple[str, ...], ...] = ()
    # Variables every worker in it gets (after the worker's own thread variables).
    variables: dict[str, str] = field(default_factory=dict)
    size_note: str = ""

    def constraints_text(self) -> str:
        if os.path.isabs(self.constraints):
            with open(self.constraints, encoding="utf-8") as handle:
                return handle.read()
        return resources.files(__package__).joinpath(self.constraints).read_text(encoding="utf-8")

    def python_versions(self) -> list[tuple[int, int]]:
        """The interpreter versions it accepts, newest first."""
        (low_major, low_minor), (high_major, high_minor) = self.python
        if low_major != high_major:
            raise ValueError(f"environment {self.name}: an interpreter range must stay within one major version")
        return [(low_major, minor) for minor in range(high_minor, low_minor - 1, -1)]


ENVIRONMENTS: dict[str, EnvironmentSpec] = {
    spec.name: spec
    for spec in (
        EnvironmentSpec(
            name="legacy",
            description="Theano, Lasagne, Keras 2, MXNet and Chainer on NumPy 1.23",
            python=((3, 11), (3, 11)),
            constraints="legacy.txt",
            packages=("setuptools", "wheel", "numpy", "scipy", "scikit-learn", "theano", "lasagne", "mxnet",
                      "keras"),
            steps=(("--no-build-isolation", "chainer"),),
            # Theano compiles its C code with these flags: no BLAS link flags (its NumPy-BLAS probe
            # fails on NumPy >= 1.22 with AttributeError blas_opt_info) and float32 as the default.
            variables={"THEANO_FLAGS": "blas.ldflags=,floatX=float32"},
            size_note="about 550 MB",
        ),
        EnvironmentSpec(
            name="paddle",
            description="PaddlePaddle 3 with its own NumPy and protobuf",
            python=((3, 9), (3, 13)),
            constraints="paddle.txt",
            packages=("paddlepaddle", "scipy", "scikit-learn"),
            size_note="about 1.1 GB",
        ),
    )
}


def environment_spec(name: str) -> EnvironmentSpec:
    try:
        return ENVIRONMENTS[name]
    except KeyError:
        raise UnknownNameError("environment", name, ENVIRONMENTS) from None
