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
class SystemLink:
    """A link inside an environment's site-packages to a library a system package installs: a wheel
    that loads a library under an older soname (CNTK's ``libmpi.so.12``) from its own folder."""

    path: str  # relative to site-packages
    target: str  # absolute path of the system library
    package: str  # the Debian package that installs ``target``


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
    # Installed alone before everything else: an interpreter whose bundled pip is too old for the
    # environment's wheels (Python 3.6's venv brings pip 18.1, which knows no manylinux2010 wheel).
    bootstrap: tuple[str, ...] = ()
    # Links setup makes inside the environment's site-packages to system libraries, each from the
    # Debian package it names (setup refuses, naming the package, when the library is missing).
    links: tuple[SystemLink, ...] = ()
    # Debian packages unpacked (no root, `dpkg -x`) into the environment's `debian/` folder before the
    # interpreter is made: a file in this package of exact `package=version` pins (see debs.py) and
    # the release they come from. Caffe 1.0 has no other route.
    debs: str = ""
    debian_release: str = ""
    # Folders (relative to the environment's folder) put on the interpreter's path by a .pth file.
    paths: tuple[str, ...] = ()

    def debs_text(self) -> str:
        return _package_text(self.debs) if self.debs else ""

    def constraints_text(self) -> str:
        return _package_text(self.constraints)

    def python_versions(self) -> list[tuple[int, int]]:
        """The interpreter versions it accepts, newest first."""
        (low_major, low_minor), (high_major, high_minor) = self.python
        if low_major != high_major:
            raise ValueError(f"environment {self.name}: an interpreter range must stay within one major version")
        return [(low_major, minor) for minor in range(high_minor, low_minor - 1, -1)]


# Written in an environment's variables, replaced by its folder when a worker is launched (the
# variables are data; where the environment lives is not known until it is set up).
ENV_PLACEHOLDER = "{env}"
# Where Caffe's Debian libraries unpack inside its environment. OpenBLAS's folder first: it holds the
# libblas.so.3 and liblapack.so.3 that Debian's alternatives would link (dpkg -x makes no
# alternatives); with bullseye's reference BLAS a probe took 27.6 s instead of 3.2 s
# (frameworks-install.md). usr/lib holds libgdal's dependencies.
CAFFE_LIBRARIES = ("debian/usr/lib/x86_64-linux-gnu/openblas-pthread", "debian/usr/lib/x86_64-linux-gnu",
                   "debian/lib/x86_64-linux-gnu", "debian/usr/lib")


def _package_text(name: str) -> str:
    """A file in this package (or at an absolute path), as text."""
    if os.path.isabs(name):
        with open(name, encoding="utf-8") as handle:
            return handle.read()
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


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
        EnvironmentSpec(
            name="caffe2",
            description="Caffe2 as torch 1.10.2 carries it (Python 3.9, NumPy 1.23)",
            python=((3, 9), (3, 9)),  # torch 1.10.2's wheels are cp36-cp39; the newest is taken
            constraints="caffe2.txt",
            packages=("torch", "numpy", "protobuf", "future", "six"),
            size_note="about 1.9 GB",
        ),
        EnvironmentSpec(
            name="cntk",
            description="CNTK 2.7 and Keras 2.3.1 on its CNTK backend (Python 3.6, NumPy 1.19)",
            python=((3, 6), (3, 6)),  # CNTK 2.7.post2's newest wheel is cp36
            constraints="cntk.txt",
            packages=("cntk", "keras", "h5py"),
            bootstrap=("pip",),
            # CNTK's libraries load OpenMPI 1.10's sonames from their own folder (RUNPATH $ORIGIN);
            # OpenMPI 4.1's libraries serve them (MPI is never initialised in one process).
            links=tuple(SystemLink(f"cntk/libs/{soname}", f"/usr/lib/x86_64-linux-gnu/{library}", "libopenmpi3")
                        for soname, library in (("libmpi.so.12", "libmpi.so.40"),
                                                ("libmpi_cxx.so.1", "libmpi_cxx.so.40"))),
            size_note="about 460 MB",
        ),
        EnvironmentSpec(
            name="dynet",
            description="DyNet 2.1.2 (Python 3.8, NumPy 1.24)",
            python=((3, 8), (3, 8)),  # dyNET 2.1.2's newest wheel is cp38
            constraints="dynet.txt",
            packages=("dynet", "numpy", "cython"),
            size_note="about 120 MB",
        ),
        EnvironmentSpec(
            name="caffe",
            description="BVLC Caffe 1.0 from Debian bullseye's packages, pycaffe on Python 3.9",
            # bullseye's pycaffe and boost-python are built for CPython 3.9 (3.9.2); pyenv's 3.9.18 loads them.
            python=((3, 9), (3, 9)),
            constraints="caffe.txt",
            packages=("numpy", "protobuf", "scikit-image", "six"),
            debs="caffe-debs.txt",
            debian_release="bullseye",
            paths=("debian/usr/lib/python3/dist-packages",),  # pycaffe
            variables={"LD_LIBRARY_PATH": ":".join(f"{ENV_PLACEHOLDER}/{path}" for path in CAFFE_LIBRARIES)},
            size_note="about 600 MB",
        ),
    )
}


def environment_spec(name: str) -> EnvironmentSpec:
    try:
        return ENVIRONMENTS[name]
    except KeyError:
        raise UnknownNameError("environment", name, ENVIRONMENTS) from None
