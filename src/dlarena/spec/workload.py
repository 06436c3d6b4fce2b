"""A workload: a network, its recipe and where it comes from."""

from __future__ import annotations

from dataclasses import dataclass

from dlarena.spec.network import Network
from dlarena.spec.recipe import Recipe

SCENARIOS: tuple[str, ...] = ("train", "infer")


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
    variant_of: str | None = None
    notes: str = ""
    quirks_not_copied: tuple[str, ...] = ()

    @property
    def params(self) -> int:
        return self.network.params

    @property
    def is_small(self) -> bool:
        return self.variant_of is not None

    def flops(self, scenario: str, batch_size: int) -> int:
        """FLOPs of one step: a forward pass for ``infer``; forward, backward and update for ``train``."""
        forward = self.network.forward_flops(batch_size)
        if scenario == "infer":
            return forward
        update = self.recipe.optimizer.update_flops_per_param * self.params
        return forward + self.network.backward_flops(batch_size) + update
