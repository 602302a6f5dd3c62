"""A third-party stage package, as a plugin author would write it (used by tests/test_registry.py)."""
from ragkit import Stage, param, register
from ragkit.stage import RANKINGS


@register("reranker.reverse_plugin")
class ReversePluginReranker(Stage):
    """Reverses the order of the hits (an example plugin)."""

    scale: float = param(1.0, help="multiplier of the negated scores")
    input_kind = output_kind = RANKINGS

    def run(self, batch):
        from ragkit.records import Hit, Ranking

        return [Ranking(r.query, tuple(Hit(h.qid, h.doc_id, -self.scale * h.score, 0, h.text, h.chunk_id, h.meta)
                                       for h in r.hits)) for r in batch]
