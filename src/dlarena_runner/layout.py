"""Gate orders of recurrent layers, shared by the host's kernel and the old-interpreter kernel.

Python 3.6; NumPy is imported by the function that needs it, so that importing this module (as the
host's ``dlarena.frameworks.layout`` does) never imports NumPy into a worker that has not yet set its
thread limits.
"""

from typing import Any

# Gate orders: the canonical ones, which every weight exchanged between frameworks uses.
LSTM_CANONICAL = "ifgo"  # PyTorch, Keras, TensorFlow, JAX/Flax (i, f, c, o) use it too
GRU_CANONICAL = "rzn"  # PyTorch (r, z, n)


def reorder_gates(array: Any, source: str, target: str, axis: int = -1) -> Any:
    """Reorder the equal gate blocks of ``array`` along ``axis`` from order ``source`` to ``target``."""
    import numpy as np

    if sorted(source) != sorted(target):
        raise ValueError(f"gate orders {source!r} and {target!r} name different gates")
    blocks = np.split(array, len(source), axis=axis)
    by_gate = dict(zip(source, blocks))
    return np.concatenate([by_gate[gate] for gate in target], axis=axis)
