"""Unpickling that can rebuild NumPy arrays and plain Python values, and nothing else.

CIFAR-10's batches and the object arrays in Keras' imdb.npz are pickles, and a pickle from the internet
can run any code while it loads (``pickle`` calls whatever callables the stream names). This unpickler
answers only the few names that rebuilding an ndarray needs; any other name stops the load.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np

from dlarena.data.dataset import DataError


def _numpy_rebuilders() -> dict[tuple[str, str], Any]:
    # The functions are taken from NumPy's own reduce output rather than imported by module path:
    # NumPy 2 moved them from numpy.core to numpy._core (and warns on the old path), while pickles
    # written by either generation (and by Python 2, as CIFAR-10's are) name one or the other.
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
    scalar = np.int64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
    reduce_5 = np.zeros(1).__reduce_ex__(5)[0]
    if reduce_5 is not reconstruct:  # NumPy >= 1.16 writes protocol-5 pickles with _frombuffer
        for core in ("numpy.core", "numpy._core"):
            allowed[(f"{core}.numeric", "_frombuffer")] = reduce_5
    # Python 3 writes bytes in protocol 0-2 pickles as _codecs.encode(text, "latin1"): a pure function.
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle.Unpickler whose find_class knows only NumPy's array and dtype rebuilders."""

    _allowed = _numpy_rebuilders()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"the pickle names {module}.{name}, which is not allowed here") from None


def safe_loads(data: bytes, source: object, encoding: str = "bytes") -> Any:
    """Unpickle ``data`` (read from ``source``, named in errors) with :class:`RestrictedUnpickler`.

    ``encoding`` decodes Python 2 ``str`` values: "bytes" keeps them as bytes (CIFAR-10's keys are
    read as b"data", as Keras does), "latin1" is what NumPy recommends for Python 2 array pickles.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except pickle.UnpicklingError as error:
        raise DataError(f"{source} is not a pickle dlarena reads: {error}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as error:
        raise DataError(f"{source} is truncated or corrupted ({type(error).__name__}: {error})") from None
