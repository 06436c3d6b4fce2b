"""A workload: a network, its recipe and where it comes from."""

from __future__ import annotations

from dataclasses import dataclass

from dlarena.spec.network import Network
from dlarena.spec.recipe import Recipe
from dlarena.wording import counted

# What a cell can measure: the speed of a training step or an inference step on synthetic tensors,
# or training on real data to a test accuracy (the workload's ``training`` says how).
# train-dp: one training step over several replicas with the global batch split among them, through
# the framework's own data-parallel runtime (measure/scaling.py); timed like train, never a default.
DATA_PARALLEL_SCENARIO = "train-dp"
SCENARIOS: tuple[str, ...] = ("train", "infer", "accuracy", DATA_PARALLEL_SCENARIO)
TIMING_SCENARIOS: tuple[str, ...] = ("train", "infer")


@dataclass(frozen=True)
class Training:
    """How the ``accuracy`` scenario trains a workload on real data, as its study did.

    ``epochs`` is the most epochs trained; with a ``target_accuracy`` training stops at the first
    epoch whose test accuracy reaches it (time to accuracy), without one it runs every epoch (the
    study's fixed budget). Only complete batches are trained, in a seeded order every framework shares.
    """

    dataset: str  # a data set of dlarena.data
    epochs: int
    batch_size: int
    target_accuracy: float | None = None
    source: str = ""  # where the epochs and the target come from

    def describe(self) -> str:
        target = f" or until {self.target_accuracy:.1%} test accuracy" if self.target_accuracy else ""
        return f"{self.dataset}, batch {self.batch_size}, {counted(self.epochs, 'epoch')}{target}"


@dataclass(frozen=True)
class Workload:
    """One catalogue entry.

    ``published_params`` is the parameter count the reference gives for the published network (None
    for small variants, which have no published figure). ``variant_of`` names the published workload
    a small variant shrinks. ``quirks_not_copied`` lists what the study's own code did that dlarena
    deliberately does not reproduce.
    """

    name: str
    title: str
    study: str
    citation: str
    network: Network
    recipe: Recipe
    default_batch_size: int
    published_params: int | None = None
    # Parameters of a task head that the published count leaves out: BERT's classifier, where the
    # paper counts BertModel (its encoder and pooler).
    head_params: int = 0
    variant_of: str | None = None
    notes: str = ""
    quirks_not_copied: tuple[str, ...] = ()
    training: Training | None = None  # None: no real data set, so no accuracy scenario

    @property
    def params(self) -> int:
        return self.network.params

    @property
    def is_small(self) -> bool:
        return self.variant_of is not None

    def flops(self, scenario: str, batch_size: int) -> int:
        """FLOPs of one step: a forward pass for ``infer``; forward, backward and update for ``train``."""
        forward = self.network.forward_flops(batch_size)
        if scenario == "infer":  # an accuracy step is a training step
            return forward
        update = self.recipe.optimizer.update_flops_per_param * self.params
        return forward + self.network.backward_flops(batch_size) + update
