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
from .stage import Configurable, ParamInfo, Stage, is_plain_class, check_value, param

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
    partitions: int = param(0, ge=0, help="document partitions = index shards (0 = a multiple of the workers, <= 50,000 documents each)")
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


# Limits that bound the work and memory of reading any pipeline file (docs/safety.md). A real
# pipeline file is a few kB with a few hundred values and a nesting depth under 10.
MAX_YAML_BYTES = 64 * 1024  # characters of text (the shipped pipeline files are about 1 kB)
MAX_YAML_DEPTH = 64  # nested mappings/lists, counted after aliases are expanded
MAX_YAML_VALUES = 10_000  # values (scalars, mappings, lists), counted after aliases are expanded
MAX_NUMBER_CHARS = 100  # the text of one number (ints over 10**99 or sexagesimal chains are refused)
_SCALAR_TAGS = {"tag:yaml.org,2002:" + t: t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_MAP, _SEQ, _MERGE = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:merge"


class _LimitError(Exception):
    def __init__(self, line: int | None, msg: str) -> None:
        super().__init__(msg)
        self.line, self.msg = line, msg


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader whose composer refuses nesting deeper than MAX_YAML_DEPTH (its
    composer is recursive, so 5,000 nested brackets used to end in RecursionError)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._nodes > MAX_YAML_VALUES:
                raise _LimitError(self.peek_event().start_mark.line + 1,
                                  f"more than {MAX_YAML_VALUES:,} values (a pipeline file has a few hundred).")
            if self._depth > MAX_YAML_DEPTH:
                raise _LimitError(self.peek_event().start_mark.line + 1,
                                  f"nested deeper than {MAX_YAML_DEPTH} levels (a pipeline file needs a few).")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def load_yaml(text: str, file: str = "<string>") -> Located:
    """Parse pipeline YAML into plain values with line numbers, within fixed limits.

    Only plain YAML: mappings, lists and str/int/float/bool/null scalars (dates are read as
    dates). Anchors and aliases work, but the values they expand to count against
    MAX_YAML_VALUES and MAX_YAML_DEPTH, so a file of nested aliases ("billion laughs") or a
    recursive alias stops with a ConfigError instead of eating memory. Merge keys (``<<``),
    non-scalar keys, tags other than the plain ones and NUL characters are refused. Every
    problem is a ConfigError naming ``file:line``.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{where(file)}pipeline YAML must be text (str), got {type(text).__name__}.")
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where(file)}pipeline file too large ({len(text):,} characters; the limit is "
                          f"{MAX_YAML_BYTES:,}).")
    try:
        node = _compose(text)
    except _LimitError as exc:
        raise ConfigError(f"{where(file, exc.line)}{exc.msg}") from None
    except yaml.reader.ReaderError as exc:  # a control character such as NUL; it has a position, no mark
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\x00")
        what = "NUL character (\\0)" if code == 0 else f"control character U+{code:04X}"
        raise ConfigError(f"{where(file, line)}invalid YAML: a {what} is not allowed in a pipeline file.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{where(file, line)}invalid YAML: {problem}") from None
    out = Located(None)
    if node is None:
        return out
    constructor = yaml.constructor.SafeConstructor()
    count = [0]
    active: set[int] = set()  # nodes being converted (an alias to one of them is a cycle)

    def fail(n: yaml.Node, msg: str) -> ConfigError:
        return ConfigError(f"{where(file, n.start_mark.line + 1)}{msg}")

    def scalar(n: yaml.Node) -> Any:
        tag = _SCALAR_TAGS.get(n.tag)
        if tag is None:
            if n.tag == _MERGE:
                raise fail(n, "merge keys (`<<`) are not supported; write the keys out.")
            raise fail(n, f"tag {n.tag!r} is not allowed (plain YAML only: strings, numbers, true/false, null).")
        if tag in ("int", "float") and len(n.value) > MAX_NUMBER_CHARS:
            raise fail(n, f"number too long ({len(n.value)} characters; the limit is {MAX_NUMBER_CHARS}).")
        try:
            value = constructor.construct_object(n, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, LookupError, AttributeError, ArithmeticError) as exc:
            raise fail(n, f"invalid {tag} value {n.value[:40]!r} ({getattr(exc, 'problem', None) or exc}).") from None
        if isinstance(value, str) and "\x00" in value:
            raise fail(n, "a NUL character (\\0) is not allowed in a value.")
        return value

    def conv(n: yaml.Node, path: tuple) -> Any:
        count[0] += 1
        if count[0] > MAX_YAML_VALUES:
            raise fail(n, f"more than {MAX_YAML_VALUES:,} values once aliases are expanded (nested aliases?).")
        if len(path) >= MAX_YAML_DEPTH:
            raise fail(n, f"nested deeper than {MAX_YAML_DEPTH} levels once aliases are expanded.")
        out.lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.ScalarNode):
            return scalar(n)
        if id(n) in active:
            raise fail(n, "recursive alias (a value that contains itself).")
        if n.tag != (_MAP if isinstance(n, yaml.MappingNode) else _SEQ):
            raise fail(n, f"tag {n.tag!r} is not allowed (plain YAML only).")
        active.add(id(n))
        try:
            if isinstance(n, yaml.MappingNode):
                d: dict = {}
                for kn, vn in n.value:
                    if not isinstance(kn, yaml.ScalarNode):
                        raise fail(kn, "a key must be a plain value, not a mapping or list (`? [..]`).")
                    if kn.tag == _MERGE:
                        raise fail(kn, "merge keys (`<<`) are not supported; write the keys out.")
                    k = scalar(kn)
                    if k in d:
                        raise fail(kn, f"duplicate key '{k}'.")
                    d[k] = conv(vn, path + (k,))
                    out.lines.setdefault(path + (k,), kn.start_mark.line + 1)
                return d
            return [conv(x, path + (i,)) for i, x in enumerate(n.value)]
        finally:
            active.discard(id(n))

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
    if is_plain_class(tp) and issubclass(tp, Stage):
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
    if type(version) is not int or version != CONFIG_VERSION:  # `true` == 1 and `1.0` == 1 in Python
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
    """The text of a pipeline file, or a ConfigError naming the path (never an OSError)."""
    if isinstance(path, str) and "\x00" in path:
        raise ConfigError(f"{path!r}: a NUL character is not allowed in a file name.")
    p = Path(path)
    try:
        if not p.exists():
            raise ConfigError(f"{p}: no such pipeline file.")
        if p.is_dir():
            raise ConfigError(f"{p}: is a folder; give a pipeline YAML file (e.g. {p / 'pipeline.yaml'}).")
        size = p.stat().st_size
        if size > MAX_YAML_BYTES * 4:  # UTF-8: at most 4 bytes a character; load_yaml checks characters
            raise ConfigError(f"{p}: pipeline file too large ({size:,} bytes; the limit is {MAX_YAML_BYTES:,} "
                              f"characters).")
        with p.open("rb") as fh:  # bounded even for a device or a file that grows
            data = fh.read(MAX_YAML_BYTES * 4 + 1)
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}).") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the pipeline file ({exc.strerror or exc}).") from None


__all__ = ["CorpusSpec", "EvalSpec", "ExecutorSpec", "load_yaml", "build_stage", "build_configurable", "stage_to_item",
           "parse_pipeline_dict", "check_value"]
