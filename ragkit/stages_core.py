"""Small built-in stages that belong to no family: rank cut-off."""
from __future__ import annotations

from .records import Ranking
from .registry import register
from .stage import RANKINGS, Stage, param


@register("ranking.cutoff")
class Cutoff(Stage):
    """Keep the top k hits of each ranking (the ``%`` operator)."""

    k: int = param(10, ge=1, help="number of hits kept per query")
    input_kind = RANKINGS
    output_kind = RANKINGS

    def run(self, batch: list[Ranking]) -> list[Ranking]:
        return [r.top(self.k) for r in batch]
