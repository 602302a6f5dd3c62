"""YAML pipeline files: safe loading with line numbers, validation against the registry.

A pipeline file::

    version: 1
    name: squad-bm25
    corpus: {path: ../data/squad_sample/corpus.jsonl}
    index:
      - indexer.bm25: {path: ../.ragkit/indexes/squad-bm25}
    pipeline:
      - retriever.bm25: {index: ../.ragkit/indexes/squad-bm25, k: 100, text: true}
      - ranking.cutoff: {k: 10}
    eval: {dataset: squad-sample, metrics: [nDCG@10, R@100]}

It is read with PyYAML's SafeLoader only (``yaml.compose`` + the safe constructor, which is
what ``yaml.safe_load`` does, keeping each node's line so that errors say ``file:line``).
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import registry
from .errors import ConfigError, did_you_mean, where
from .stage import Configurable, ParamInfo, Stage, check_value, param

CONFIG_VERSION = 1
TOP_LEVEL_KEYS = ("version", "name", "description", "corpus", "index", "pipeline", "eval", "executor")


class CorpusSpec(Configurable):
    """Where the documents come from: a file, a folder, or a named dataset."""

    key = "corpus"
    path: str | None = param(None, help="file (.jsonl, .csv) or folder of .txt/.md/.html/.pdf files")
    dataset: str | None = param(None, help="a named dataset (see `ragkit eval --help`) used as corpus")
    format: Literal["auto", "jsonl", "csv", "folder"] = param("auto", help="how to read `path`")
    id_field: str = param("doc_id", help="JSON lines/CSV field holding the document id")
    text_field: str = param("text", help="JSON lines/CSV field holding the text")
    title_field: str = param("title", help="JSON lines/CSV field holding the title (optional)")
    on_error: Literal["fail", "skip"] = param("fail", help="an unreadable file fails the run or is reported and skipped")
    on_empty: Literal["skip", "fail"] = param("skip", help="a document with empty text is reported and skipped, or fails")

    def validate(self) -> None:
        if (self.path is None) == (self.dataset is None):
            raise ConfigError("'corpus': give exactly one of 'path' or 'dataset'.")


class EvalSpec(Configurable):
    """What `ragkit eval` measures by default."""

    key = "eval"
    dataset: str = param(help="dataset name or path (see `ragkit eval --help`)")
    metrics: list[str] = param(["nDCG@10", "RR@10", "R@100", "AP", "P@10"], help="ir-measures names, plus EM, F1")
    batch_size: int = param(1, ge=1, help="queries per batch (1 gives true per-query latency)")
    max_queries: int | None = param(None, ge=1, help="evaluate only the first N queries")


class ExecutorSpec(Configurable):
    """Where `ragkit index` and `ragkit eval` run: in process, or on a Dask cluster (ragkit.distributed)."""

    key = "executor"
    cluster: str = param("local", help="serial (in this process, sharded), local or local:N (Dask LocalCluster of "
                                       "N worker processes on 127.0.0.1; default one per CPU), tcp://HOST:PORT "
                                       "(an existing Dask scheduler)")
    partitions: int = param(0, ge=0, help="document partitions = index shards (0 = one per worker)")
    threads_per_worker: int = param(1, ge=1, help="threads of each local worker process")
    retries: int = param(0, ge=0, help="extra attempts for a partition whose task raised (a dead worker's "
                                       "partitions are always recomputed by Dask)")
    connect_timeout: float = param(10.0, gt=0, help="seconds to wait for a tcp:// scheduler before failing")

    def validate(self) -> None:
        from .distributed import check_cluster

        check_cluster(self.cluster)


# -------------------------------------------------------------------------------------------
# YAML with line numbers


@dataclass
class Located:
    """Plain python values plus the line of every path inside them."""

    value: Any
    lines: dict[tuple, int] = field(default_factory=dict)

    def line(self, *path: Any) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def load_yaml(text: str, file: str = "<string>") -> Located:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError(f"{where(file, line)}invalid YAML: {getattr(exc, 'problem', exc)}") from None
    out = Located(None)
    if node is None:
        return out
    constructor = yaml.constructor.SafeConstructor()

    std = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}

    def conv(n: yaml.Node, path: tuple) -> Any:
        out.lines[path] = n.start_mark.line + 1
        if type(n) in std and n.tag != std[type(n)]:
            raise ConfigError(f"{where(file, n.start_mark.line + 1)}tag {n.tag!r} is not allowed (plain YAML only).")
        if isinstance(n, yaml.ScalarNode):
            try:
                return constructor.construct_object(n, deep=True)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{where(file, n.start_mark.line + 1)}invalid YAML: {exc.problem}") from None
        if isinstance(n, yaml.MappingNode):
            d: dict = {}
            for kn, vn in n.value:
                k = constructor.construct_object(kn, deep=True)
                if k in d:
                    raise ConfigError(f"{where(file, kn.start_mark.line + 1)}duplicate key '{k}'.")
                d[k] = conv(vn, path + (k,))
                out.lines.setdefault(path + (k,), kn.start_mark.line + 1)
            return d
        return [conv(x, path + (i,)) for i, x in enumerate(n.value)]

    out.value = conv(node, ())
    return out


# -------------------------------------------------------------------------------------------
# building objects


def _stage_item(item: Any, file: str, loc: Located, path: tuple, label: str) -> tuple[str, dict]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        (key, args), = item.items()
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ConfigError(f"{where(file, loc.line(*path))}{label} '{key}': parameters must be a mapping "
                              f"like `{key}: {{k: 10}}`, got {type(args).__name__} {args!r}.")
        return str(key), args
    raise ConfigError(f"{where(file, loc.line(*path))}{label}: expected `- <role>.<method>: {{params}}`, got {item!r}.")


def build_configurable(cls: type[Configurable], args: dict, *, file: str = "<string>", loc: Located | None = None,
                       path: tuple = (), label: str = "") -> Any:
    """Construct ``cls(**args)`` with errors that say file:line, label, valid choices."""
    loc = loc or Located(None)
    name = cls.key or cls.__name__
    infos = {p.name: p for p in cls.params_info()}
    prefix = lambda *sub: where(file, loc.line(*path, *sub)) + (f"{label} '{name}': " if label else f"'{name}': ")
    for k in args:
        if k not in infos:
            raise ConfigError(f"{prefix(k)}unknown parameter '{k}'.{did_you_mean(k, infos)} "
                              f"Valid: {', '.join(infos) or '(none)'}.")
    missing = [p.name for p in infos.values() if p.required and p.name not in args]
    if missing:
        raise ConfigError(f"{prefix()}missing required parameter '{missing[0]}' ({infos[missing[0]].type_name()}"
                          f"{': ' + infos[missing[0]].help if infos[missing[0]].help else ''}).")
    kwargs = {}
    for k, v in args.items():
        kwargs[k] = _convert_nested(infos[k], v, file, loc, path + (k,), prefix(k))
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        msg = str(exc)
        bad = next((k for k in args if f"parameter '{k}'" in msg), None)
        msg = msg.split(": ", 1)[1] if msg.startswith(f"'{name}'") else msg
        raise ConfigError(prefix(*(bad,) if bad else ()) + msg) from None


def _stage_types(tp: Any) -> bool:
    if isinstance(tp, type) and issubclass(tp, Stage):
        return True
    return any(_stage_types(a) for a in typing.get_args(tp))


def _convert_nested(info: ParamInfo, value: Any, file: str, loc: Located, path: tuple, prefix: str) -> Any:
    if not _stage_types(info.type):
        return value
    if isinstance(value, list):
        return [build_stage(item, file=file, loc=loc, path=path + (i,), label=f"{prefix}item #{i + 1}")
                for i, item in enumerate(value)]
    return build_stage(value, file=file, loc=loc, path=path, label=prefix)


def build_stage(item: Any, *, file: str = "<string>", loc: Located | None = None, path: tuple = (),
                label: str = "stage") -> Stage:
    loc = loc or Located(None)
    if isinstance(item, Stage):
        return item
    key, args = _stage_item(item, file, loc, path, label)
    try:
        cls = registry.get(key)
    except ConfigError as exc:
        raise ConfigError(f"{where(file, loc.line(*path))}{label}: {exc}") from None
    return build_configurable(cls, args, file=file, loc=loc, path=path + (key,), label=label)


def stage_to_item(stage: Stage) -> Any:
    cfg = stage.changed_config()
    return {stage.key: cfg} if cfg else stage.key


def parse_pipeline_dict(data: Any, file: str, loc: Located) -> dict:
    """Validate the top level of a pipeline file and build its parts."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where(file, loc.line())}a pipeline file must be a mapping with keys "
                          f"{', '.join(TOP_LEVEL_KEYS)}.")
    for k in data:
        if k not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{where(file, loc.line(k))}unknown key '{k}'.{did_you_mean(str(k), TOP_LEVEL_KEYS)} "
                              f"Valid: {', '.join(TOP_LEVEL_KEYS)}.")
    version = data.get("version")
    if version is None:
        raise ConfigError(f"{where(file, 1)}missing 'version: {CONFIG_VERSION}'.")
    if version != CONFIG_VERSION:
        raise ConfigError(f"{where(file, loc.line('version'))}unsupported version {version!r}; "
                          f"this ragkit reads version {CONFIG_VERSION}.")
    if "pipeline" not in data:
        raise ConfigError(f"{where(file, loc.line())}missing 'pipeline:' (the list of query stages).")
    out: dict[str, Any] = {}
    for k in ("name", "description"):
        if k in data and not isinstance(data[k], str):
            raise ConfigError(f"{where(file, loc.line(k))}'{k}' must be a string.")
        out[k] = data.get(k) or ""
    for section in ("index", "pipeline"):
        items = data.get(section) or []
        if not isinstance(items, list):
            raise ConfigError(f"{where(file, loc.line(section))}'{section}' must be a list of stages.")
        out[section] = [build_stage(it, file=file, loc=loc, path=(section, i), label=f"{section} stage #{i + 1}")
                        for i, it in enumerate(items)]
    for section, cls in (("corpus", CorpusSpec), ("eval", EvalSpec), ("executor", ExecutorSpec)):
        if data.get(section) is None:
            out[section] = None
            continue
        if not isinstance(data[section], dict):
            raise ConfigError(f"{where(file, loc.line(section))}'{section}' must be a mapping.")
        out[section] = build_configurable(cls, data[section], file=file, loc=loc, path=(section,))
    return out


def read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such pipeline file.")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}).") from None


__all__ = ["CorpusSpec", "EvalSpec", "ExecutorSpec", "load_yaml", "build_stage", "build_configurable", "stage_to_item",
           "parse_pipeline_dict", "check_value"]
