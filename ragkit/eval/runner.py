"""``evaluate``: run pipelines over a dataset's queries and measure quality, latency and significance.

Which queries count:

- IR metrics average over the queries with at least one relevant document in the qrels; queries
  without judgements are not run for them (CISI's 36 unjudged queries, for example).
- Answer metrics (EM, F1, EM-in) average over the queries with gold answers, for pipelines whose
  output is answers. A pipeline producing answers is scored on IR metrics too, through the ranking
  its answers carry (``Answer.ranking``).
- ``max_queries`` keeps the first N of the queries that count, in dataset order.

Latency: queries run in batches of ``batch_size`` (default 1, so each query's time is its own);
a batch's time is shared equally among its queries. ``setup()`` (model loading) is timed apart.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError, did_you_mean
from ..records import Answer, Ranking
from ..stage import ANSWERS, RANKINGS, Stage
from .datasets import Dataset, load_dataset
from .metrics import DEFAULT_ANSWER, DEFAULT_IR, Metric, answer_per_query, ir_per_query, parse_metrics, run_from_hits
from .report import EvalResult
from .significance import TESTS, compare


def _name_pipelines(pipelines: Any) -> dict[str, Any]:
    from ..pipeline import Pipeline

    def as_pipeline(p: Any, label: str) -> Pipeline:
        if isinstance(p, Pipeline):
            return p
        if isinstance(p, Stage):
            return Pipeline([p])
        raise ConfigError(f"evaluate: {label} is a {type(p).__name__}; give a Pipeline or a Stage.")

    if isinstance(pipelines, Mapping):
        out = {str(k): as_pipeline(v, f"pipeline {k!r}") for k, v in pipelines.items()}
    else:
        items = [pipelines] if not isinstance(pipelines, (list, tuple)) else list(pipelines)
        out = {}
        for i, p in enumerate(items):
            p = as_pipeline(p, f"pipeline #{i + 1}")
            base = p.name or " >> ".join(s.key or type(s).__name__ for s in p.stages) or f"pipeline{i + 1}"
            name, n = base, 2
            while name in out:
                name, n = f"{base} ({n})", n + 1
            out[name] = p
    if not out:
        raise ConfigError("evaluate: no pipelines given.")
    for name, p in out.items():
        if p.output_kind not in (RANKINGS, ANSWERS):
            raise ConfigError(f"evaluate: pipeline {name!r} outputs {p.output_kind}; it must end in rankings "
                              f"(a retriever or reranker) or answers (a generator).")
    return out


def _dataset_from_spec(pipes: dict[str, Any]) -> tuple[Any, Any]:
    for p in pipes.values():
        spec = getattr(p, "evaluation", None)
        if spec is not None:
            ds = spec.dataset
            if p.base_dir is not None and not Path(ds).is_absolute() and (Path(p.base_dir) / ds).is_dir():
                ds = str(Path(p.base_dir) / ds)
            return ds, spec.metrics
    raise ConfigError("evaluate: no dataset given and no pipeline has an 'eval:' section naming one.")


def _choose_metrics(metrics: Any, ds: Dataset, pipes: dict[str, Any]) -> list[Metric]:
    any_answers = any(p.output_kind == ANSWERS for p in pipes.values())
    if metrics is None:
        names = list(DEFAULT_IR) if ds.judged_qids() else []
        if any_answers and ds.answered_qids():
            names += list(DEFAULT_ANSWER)
        if not names:
            raise DataError(f"dataset {ds.name!r} has no relevance judgements" +
                            (" and no gold answers" if any_answers else " (answer metrics need a pipeline "
                             "that ends in a generator)") + "; nothing to evaluate.")
        return parse_metrics(names)
    parsed = parse_metrics(metrics)
    # fail before running any pipeline when no installed ir-measures provider computes a measure
    ir_per_query([m for m in parsed if m.kind == "ir"], {"q": {"d": 1}}, {"q": {"d": 0.0}})
    if any(m.kind == "ir" for m in parsed) and not ds.judged_qids():
        raise DataError(f"dataset {ds.name!r} has no qrels with a relevant document; IR metrics "
                        f"({', '.join(m.name for m in parsed if m.kind == 'ir')}) cannot be computed.")
    if any(m.kind == "answer" for m in parsed):
        if not ds.answered_qids():
            raise DataError(f"dataset {ds.name!r} has no gold answers; EM/F1/EM-in cannot be computed.")
        if not any_answers:
            raise ConfigError("answer metrics (EM, F1, EM-in) need a pipeline that ends in a generator; "
                              "every pipeline here outputs rankings.")
    return parsed


def _progress(enabled: bool | None, total: int, desc: str):
    from tqdm.auto import tqdm

    show = enabled if enabled is not None else sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="q", disable=not show, leave=False)


def _run_pipeline(name: str, pipe: Any, queries: list, batch_size: int, progress: bool | None,
                  executor: Any = None):
    """Results by qid, per-query seconds, per-query seconds of each stage key, setup seconds."""
    batches = [queries[start:start + batch_size] for start in range(0, len(queries), batch_size)]
    if executor is not None:  # batches run on the workers (each loads the pipeline once), in order here
        from ..distributed import run_query_batches

        done, setup_s = run_query_batches(pipe, batches, executor)
    else:
        t0 = time.perf_counter()
        pipe.setup()
        setup_s = time.perf_counter() - t0
        done = None
    results: dict[str, Any] = {}
    latency: dict[str, float] = {}
    stages: dict[str, float] = {}
    with _progress(progress, len(queries), name) as bar:
        for bi, batch in enumerate(batches):
            out, times = done[bi] if done is not None else pipe.run_timed(batch)
            if len(out) != len(batch):
                raise DataError(f"pipeline {name!r} returned {len(out)} results for a batch of {len(batch)} queries.")
            per_q = sum(times.values()) / len(batch)
            for q, r in zip(batch, out):
                qid = getattr(r, "qid", None)
                results[qid if qid in {x.qid for x in batch} else q.qid] = r
                latency[q.qid] = per_q
            for key, sec in times.items():
                label = key.split(" ", 1)[1] if key.startswith("#") and " " in key else key
                stages[label] = stages.get(label, 0.0) + sec
            bar.update(len(batch))
    n = max(len(queries), 1)
    return results, latency, {k: v / n for k, v in stages.items()}, setup_s


def _ranking_of(r: Any) -> Ranking | None:
    if isinstance(r, Ranking):
        return r
    if isinstance(r, Answer):
        return r.ranking
    return None


def evaluate(pipelines: Any, dataset: "str | Path | Dataset | None" = None, metrics: Sequence[str] | str | None = None,
             *, batch_size: int = 1, max_queries: int | None = None, baseline: str | int | None = None,
             significance: str | None = "ttest", progress: bool | None = None, save: str | Path | None = None,
             permutations: int = 10_000, seed: int = 0, executor: Any = None) -> EvalResult:
    """Evaluate one or more pipelines on a dataset.

    ``pipelines``: a Pipeline (or Stage), a list of them (named by ``Pipeline.name`` or their stage
    keys) or a ``{name: pipeline}`` dict. ``dataset``: a built-in name, a generic-format folder or a
    :class:`Dataset` (default: the first pipeline's ``eval:`` section). ``metrics``: ir-measures names
    and/or EM, F1, EM-in (default: nDCG@10, RR@10, R@100, AP, P@10, plus EM, F1, EM-in for
    generators when the dataset has answers). ``baseline``: name or index of the pipeline the others
    are tested against (default: the first). ``significance``: "ttest", "randomization", "both" or
    None. ``save``: write the JSON result there (``.md``: the Markdown table). ``executor``: run the
    queries on a Dask cluster (``"local:2"``, ``"tcp://host:8786"``, a ``distributed.Client``; see
    :mod:`ragkit.distributed`): same results, latency measured on the workers.
    """
    pipes = _name_pipelines(pipelines)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"evaluate: batch_size must be an int >= 1, got {batch_size!r}")
    if max_queries is not None and (not isinstance(max_queries, int) or max_queries < 1):
        raise ConfigError(f"evaluate: max_queries must be an int >= 1 or None, got {max_queries!r}")
    if significance is not None and significance not in TESTS and significance != "none":
        raise ConfigError(f"evaluate: significance={significance!r}; valid: {', '.join(TESTS)}, None."
                          f"{did_you_mean(str(significance), TESTS)}")
    test = None if significance in (None, "none") else significance
    if dataset is None:
        dataset, spec_metrics = _dataset_from_spec(pipes)
        metrics = spec_metrics if metrics is None else metrics
    ds = load_dataset(dataset)
    chosen = _choose_metrics(metrics, ds, pipes)
    ir_metrics = [m for m in chosen if m.kind == "ir"]
    ans_metrics = [m for m in chosen if m.kind == "answer"]

    wanted = set(ds.judged_qids()) if ir_metrics else set()
    if ans_metrics:
        wanted |= set(ds.answered_qids())
    queries = [q for q in ds.queries if q.qid in wanted][:max_queries]
    run_ids = {q.qid for q in queries}
    ir_qids = [q for q in ds.judged_qids() if q in run_ids] if ir_metrics else []
    ans_qids = [q for q in ds.answered_qids() if q in run_ids] if ans_metrics else []

    base_name = _baseline(baseline, list(pipes))
    summary, per_query, latency = {}, {}, {}
    import contextlib

    with contextlib.ExitStack() as stack:
        ex = None
        if executor is not None:
            from ..distributed import open_executor

            ex = stack.enter_context(open_executor(executor))
        runs = {name: _run_pipeline(name, pipe, queries, batch_size, progress, ex) for name, pipe in pipes.items()}
    for name, pipe in pipes.items():
        results, lat, stages, setup_s = runs[name]
        values: dict[str, dict[str, float]] = {}
        if ir_metrics:
            rankings = {q: _ranking_of(results.get(q)) for q in ir_qids}
            if pipe.output_kind == RANKINGS or any(r is not None for r in rankings.values()):
                run = {q: run_from_hits(r.hits) if r is not None else {} for q, r in rankings.items()}
                values.update(ir_per_query(ir_metrics, {q: ds.qrels[q] for q in ir_qids}, run))
        if ans_metrics and pipe.output_kind == ANSWERS:
            preds = {q: getattr(results.get(q), "text", "") or "" for q in ans_qids}
            values.update(answer_per_query(ans_metrics, preds, {q: ds.answers[q] for q in ans_qids}))
        summary[name] = {m.name: (float(np.mean(list(values[m.name].values())))
                                  if m.name in values and values[m.name] else None) for m in chosen}
        per_query[name] = {**values, "latency_ms": {q: s * 1000 for q, s in lat.items()}}
        ms = np.array([s * 1000 for s in lat.values()]) if lat else np.zeros(0)
        latency[name] = {"p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
                         "p95_ms": float(np.percentile(ms, 95)) if ms.size else None,
                         "mean_ms": float(ms.mean()) if ms.size else None,
                         "stages_ms": {k: v * 1000 for k, v in stages.items()}, "setup_s": setup_s}
        ttfts = [r.timings["ttft_s"] for r in results.values()
                 if isinstance(r, Answer) and isinstance(r.timings.get("ttft_s"), (int, float))]
        if ttfts:  # generators that report time to first token (mean over queries)
            latency[name]["ttft_ms"] = float(np.mean(ttfts)) * 1000

    sig: dict[str, dict[str, dict[str, float]]] = {}
    if test and base_name is not None and len(pipes) > 1:
        for name in pipes:
            if name == base_name:
                continue
            sig[name] = {}
            for m in chosen:
                a, b = per_query[name].get(m.name), per_query[base_name].get(m.name)
                if a and b:
                    common = [q for q in a if q in b]
                    sig[name][m.name] = compare([a[q] for q in common], [b[q] for q in common], test,
                                                permutations=permutations, seed=seed)
    from .. import __version__

    result = EvalResult(
        dataset=ds.name, pipelines=list(pipes), metrics=[m.name for m in chosen], summary=summary,
        per_query=per_query, latency=latency, significance=sig, baseline=base_name if len(pipes) > 1 else None,
        test=test, queries={**({"ir": len(ir_qids)} if ir_metrics else {}),
                            **({"answer": len(ans_qids)} if ans_metrics else {}), "run": len(queries)},
        metric_kinds={m.name: m.kind for m in chosen},
        info={"ragkit_version": __version__, "batch_size": batch_size, "max_queries": max_queries,
              "permutations": permutations if test in ("randomization", "both") else None, "seed": seed,
              "dataset_stats": ds.stats(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "pipelines": {n: _yaml_or_repr(p) for n, p in pipes.items()}})
    if save is not None:
        result.save(save)
    return result


def _baseline(baseline: str | int | None, names: list[str]) -> str | None:
    if baseline is None:
        return names[0]
    if isinstance(baseline, int) and not isinstance(baseline, bool):
        if not -len(names) <= baseline < len(names):
            raise ConfigError(f"evaluate: baseline index {baseline} out of range for {len(names)} pipelines.")
        return names[baseline]
    if baseline not in names:
        raise ConfigError(f"evaluate: baseline {baseline!r} is not one of the pipelines: {', '.join(names)}."
                          f"{did_you_mean(str(baseline), names)}")
    return baseline


def _yaml_or_repr(p: Any) -> str:
    try:
        return p.to_yaml()
    except Exception:  # a stage built in Python with values YAML cannot hold
        return repr(p)


__all__ = ["evaluate"]
