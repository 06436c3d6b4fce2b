"""The test-only fault frameworks' answers to the probes (frameworks/fault.py): NumPy, right for
``fault-none``, deliberately wrong for ``fault-wrong`` (each in the way a real framework could be
wrong), and the injected fault for the others, so that every probe's failure can be proven."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np

from dlarena.frameworks.base import Unavailable, Unsupported
from dlarena.probes import checks
from dlarena.probes.runner import ProbeContext

# fault-wrong's errors: each well past checks.TOLERANCE, as a sign slip or a missed term would be.
WRONG_SCALE = 1.01


def _fault(context: ProbeContext) -> str:
    """The framework's fault; the ones that strike before any answer strike here."""
    fault = context.framework.removeprefix("fault-")
    if fault == "raise":
        raise RuntimeError("injected failure while answering the probe")
    if fault == "unsupported":
        raise Unsupported("the fault-unsupported framework cannot express this probe (injected)")
    if fault == "unavailable":
        raise Unavailable("the fault-unavailable framework's device is missing (injected)")
    if fault == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    return fault


def custom_layer(context: ProbeContext) -> dict[str, Any]:
    problem = checks.custom_layer_problem()
    x = problem.x.astype(np.float64)
    sigmoid = 1.0 / (1.0 + np.exp(-checks.ALPHA * x))
    gradient = problem.weights * (sigmoid + checks.ALPHA * x * sigmoid * (1.0 - sigmoid))  # by hand
    if _fault(context) == "wrong":
        gradient = problem.weights * sigmoid  # the product rule's second term forgotten
    return {"gradient_error": checks.check("the gradient", gradient, problem.reference_gradient())}


def higher_order(context: ProbeContext) -> dict[str, Any]:
    problem = checks.hessian_problem()
    answer = problem.reference_hvp()
    if _fault(context) == "wrong":
        answer = tuple(WRONG_SCALE * part for part in answer)
    return {"hvp_error": checks.check_hvp(problem, answer)}


def dynamic_loop(context: ProbeContext) -> dict[str, Any]:
    problem = checks.loop_problem()
    answer = problem.reference()
    if _fault(context) == "wrong":  # a loop that tests its condition once too few
        answer = [problem.run(problem.matrix.astype(np.float64), start) for start in problem.starts]
        answer = [(steps - 1, final) for steps, final in answer]
    return {"error": checks.check_loop(problem, "eager", answer), "gradient": False,
            "gradient_note": "NumPy has no autodiff"}


def variable_length(context: ProbeContext) -> dict[str, Any]:
    problem = checks.sequence_problem()
    lengths = problem.lengths
    if _fault(context) == "wrong":  # the padding run over as if it were data
        lengths = np.full_like(lengths, problem.inputs.shape[1])
    reference = checks.SequenceProblem(problem.inputs, lengths, problem.input_kernel, problem.recurrent_kernel,
                                       problem.bias).reference()
    return {"error": checks.check("the final hidden states", reference, problem.reference()), "method": "NumPy"}
