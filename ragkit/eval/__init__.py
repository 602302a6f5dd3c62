"""Evaluation: datasets, IR and answer metrics, per-stage latency, paired significance tests.

    from ragkit.eval import evaluate
    result = evaluate({"bm25": bm25, "bm25+ce": bm25 >> ce % 10}, "cranfield", ["nDCG@10", "AP"])
    print(result.table())

Importing this package is cheap: ir-measures, scipy and tqdm load when first used.
"""
from .datasets import Dataset, list_datasets, load_dataset
from .metrics import normalize_answer, parse_metric
from .report import EvalResult
from .runner import evaluate
from .significance import paired_ttest, randomization_test

__all__ = ["evaluate", "load_dataset", "Dataset", "list_datasets", "EvalResult", "parse_metric",
           "normalize_answer", "paired_ttest", "randomization_test"]
