"""The result of an evaluation: summary table, per-query values, latency, p-values, JSON."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEVELS = ((0.01, "**"), (0.05, "*"))
TEST_NAMES = {"ttest": "paired t-test", "randomization": "paired randomisation test (sign flips)",
              "both": "paired t-test and randomisation test (both must agree)"}


@dataclass
class EvalResult:
    """What :func:`ragkit.eval.evaluate` returns.

    - ``summary[pipeline][metric]``: mean over the evaluated queries (None: not applicable);
    - ``per_query[pipeline][metric][qid]``: the per-query values (``latency_ms`` too);
    - ``latency[pipeline]``: ``p50_ms``, ``p95_ms``, ``mean_ms`` per query, ``stages_ms`` (mean ms
      per query of each stage key), ``setup_s``;
    - ``significance[pipeline][metric]``: ``delta`` (vs baseline), ``n`` and the p-values;
    - ``queries``: how many queries each metric family was averaged over.
    """

    dataset: str
    pipelines: list[str]
    metrics: list[str]
    summary: dict[str, dict[str, float | None]]
    per_query: dict[str, dict[str, dict[str, float]]]
    latency: dict[str, dict[str, Any]]
    significance: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    baseline: str | None = None
    test: str | None = None
    queries: dict[str, int] = field(default_factory=dict)
    metric_kinds: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    # -- lookups ---------------------------------------------------------------------------------
    def __getitem__(self, pipeline: str) -> dict[str, float | None]:
        return self.summary[pipeline]

    def pvalue(self, pipeline: str, metric: str, test: str | None = None) -> float | None:
        """The p-value of ``pipeline`` vs the baseline on ``metric`` (the larger one for "both")."""
        sig = self.significance.get(pipeline, {}).get(metric)
        if not sig:
            return None
        test = test or self.test
        keys = ["ttest", "randomization"] if test == "both" else [test]
        ps = [sig[k] for k in keys if k in sig and sig[k] is not None]
        if not ps or any(isinstance(p, float) and math.isnan(p) for p in ps):
            return None
        return max(ps)

    def marker(self, pipeline: str, metric: str) -> str:
        p = self.pvalue(pipeline, metric)
        if p is None:
            return ""
        for level, mark in LEVELS:
            if p < level:
                return mark
        return ""

    def stage_columns(self) -> list[str]:
        cols: list[str] = []
        for name in self.pipelines:
            for key in self.latency.get(name, {}).get("stages_ms", {}):
                if key not in cols:
                    cols.append(key)
        return cols

    # -- table -----------------------------------------------------------------------------------
    def rows(self, digits: int = 4) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the summary table as strings."""
        stages = self.stage_columns()
        ttft = any(self.latency.get(n, {}).get("ttft_ms") is not None for n in self.pipelines)
        header = ["pipeline", *self.metrics, *(["TTFT ms"] if ttft else []), "p50 ms", "p95 ms",
                  *[f"{s} ms" for s in stages]]
        rows = []
        for name in self.pipelines:
            row = [name + (" (baseline)" if name == self.baseline and len(self.pipelines) > 1 else "")]
            for m in self.metrics:
                v = self.summary.get(name, {}).get(m)
                row.append("-" if v is None else f"{v:.{digits}f}{self.marker(name, m)}")
            lat = self.latency.get(name, {})
            if ttft:
                row.append(_ms(lat.get("ttft_ms")))
            row += [_ms(lat.get("p50_ms")), _ms(lat.get("p95_ms"))]
            row += [_ms(lat.get("stages_ms", {}).get(s)) for s in stages]
            rows.append(row)
        return header, rows

    def table(self, digits: int = 4, fmt: str = "text") -> str:
        """Aligned text table (``fmt="markdown"`` for a Markdown table): pipelines as rows, metrics and
        latency as columns, significance markers against the baseline, and a legend."""
        header, rows = self.rows(digits)
        if fmt == "markdown":
            lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:"
                                                                      for i in range(len(header))) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        elif fmt == "text":
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
            just = lambda cells: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])  # noqa: E731
                                           for i, c in enumerate(cells)).rstrip()
            lines = [just(header), "  ".join("-" * w for w in widths)] + [just(r) for r in rows]
        else:
            raise ValueError(f"fmt={fmt!r}; valid: text, markdown")
        return "\n".join(lines + [""] + self.legend())

    def legend(self) -> list[str]:
        q = self.queries
        parts = []
        if q.get("ir") is not None:
            parts.append(f"IR metrics over {q['ir']} queries with relevance judgements")
        if q.get("answer") is not None:
            parts.append(f"answer metrics over {q['answer']} queries with gold answers")
        out = [f"dataset {self.dataset!r}: " + "; ".join(parts) + "." if parts else f"dataset {self.dataset!r}."]
        bs = self.info.get("batch_size")
        out.append("latency: milliseconds per query" + (f" (batches of {bs})" if bs else "") +
                   "; stage columns are means per query.")
        if self.baseline and self.test and len(self.pipelines) > 1:
            out.append(f"* p < 0.05, ** p < 0.01 vs baseline {self.baseline!r}, {TEST_NAMES[self.test]}, "
                       f"per metric (no correction for multiple comparisons).")
        return out

    def __str__(self) -> str:
        return self.table()

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _clean({"dataset": self.dataset, "pipelines": self.pipelines, "metrics": self.metrics,
                       "metric_kinds": self.metric_kinds, "queries": self.queries, "baseline": self.baseline,
                       "test": self.test, "summary": self.summary, "latency": self.latency,
                       "significance": self.significance, "per_query": self.per_query, "info": self.info})

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        """Write the JSON form atomically (``.md`` writes the Markdown table instead)."""
        from ..artifacts import atomic_write_text

        path = Path(path)
        text = self.table(fmt="markdown") + "\n" if path.suffix.lower() == ".md" else self.to_json() + "\n"
        atomic_write_text(path, text)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalResult":
        names = ("dataset", "pipelines", "metrics", "summary", "per_query", "latency", "significance",
                 "baseline", "test", "queries", "metric_kinds", "info")
        return cls(**{k: data[k] for k in names if k in data})

    @classmethod
    def load(cls, path: str | Path) -> "EvalResult":
        from ..errors import DataError

        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{path}: not a saved ragkit evaluation result ({exc}).") from None


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _clean(x: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, numpy scalars -> Python numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


__all__ = ["EvalResult"]
