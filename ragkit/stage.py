"""The stage protocol and the parameter machinery shared by stages and config sections.

A stage is a plain class whose keyword-only constructor arguments *are* its configuration.
Subclasses declare parameters as annotated class attributes with :func:`param`; the class is
turned into a keyword-only dataclass, so stages print, compare and pickle by their
configuration. Heavy state (models, indexes) is loaded in :meth:`Stage.setup`, never in
``__init__``, lives in private ``_attributes`` (plain, unannotated; see :class:`Stage`) and is
dropped when pickling.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, Literal, Sequence, get_args, get_origin

from .errors import ConfigError, PipelineError, did_you_mean

# the kinds of batches flowing between stages
DOCUMENTS, CHUNKS, QUERIES, RANKINGS, ANSWERS = "documents", "chunks", "queries", "rankings", "answers"
KINDS = (DOCUMENTS, CHUNKS, QUERIES, RANKINGS, ANSWERS)


def param(default: Any = MISSING, *, help: str = "", ge: float | None = None, le: float | None = None,
          gt: float | None = None, lt: float | None = None) -> Any:
    """Declare a stage parameter. Choices come from a ``Literal[...]`` annotation."""
    meta = {"help": help, "ge": ge, "le": le, "gt": gt, "lt": lt}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: Any
    default: Any
    help: str
    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    lt: float | None = None

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def choices(self) -> tuple | None:
        return literal_choices(self.type)

    def type_name(self) -> str:
        return type_name(self.type)

    def range_text(self) -> str:
        parts = []
        for op, v in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(self, op)
            if bound is not None:
                parts.append(f"{v} {bound}" if isinstance(bound, int) else f"{v} {bound:g}")
        return " and ".join(parts)


def literal_choices(tp: Any) -> tuple | None:
    if get_origin(tp) is Literal:
        return get_args(tp)
    if _is_union(tp):
        for a in get_args(tp):
            c = literal_choices(a)
            if c:
                return c
    return None


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


def is_plain_class(tp: Any) -> bool:
    """A plain class (on Python 3.10 ``list[str]`` also passes ``isinstance(tp, type)``)."""
    return isinstance(tp, type) and get_origin(tp) is None


def type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if is_plain_class(tp):
        if issubclass(tp, Configurable):
            return "stage"
        return {float: "float", int: "int", str: "str", bool: "bool"}.get(tp, tp.__name__)
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + "|".join(map(str, get_args(tp)))
    if _is_union(tp):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin in (list, tuple, Sequence):
        args = get_args(tp)
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        k, v = get_args(tp)
        return f"dict[{type_name(k)}, {type_name(v)}]"
    return str(tp)


def check_value(value: Any, tp: Any) -> bool:
    """Whether a plain value fits a parameter annotation."""
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if is_plain_class(tp):
        return isinstance(value, tp)
    origin = get_origin(tp)
    if origin is Literal:
        return value in get_args(tp)
    if _is_union(tp):
        return any(check_value(value, a) for a in get_args(tp))
    if origin in (list, Sequence, tuple):
        (arg,) = get_args(tp)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(check_value(v, arg) for v in value)
    if origin is dict:
        k, v = get_args(tp)
        return isinstance(value, dict) and all(check_value(a, k) and check_value(b, v) for a, b in value.items())
    return True


MAX_INT_PARAM = 2**31 - 1  # an int parameter without its own upper bound is a 32-bit value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad_plain(value: Any, depth: int = 0) -> str:
    """Why a parameter value is refused whatever its type: a non-finite float (``.inf``, ``.nan``)
    or a string holding a NUL character, anywhere inside it; '' when it is fine."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"is {value!r}; numbers must be finite (not inf or nan)."
    if isinstance(value, str) and "\x00" in value:
        return "contains a NUL character (\\0), which no file name or text parameter may hold."
    if depth < 32 and isinstance(value, (list, tuple)):
        return next((b for b in (_bad_plain(v, depth + 1) for v in value) if b), "")
    if depth < 32 and isinstance(value, dict):
        return next((b for b in (_bad_plain(v, depth + 1) for kv in value.items() for v in kv) if b), "")
    return ""


class Configurable:
    """Base of everything configured by keyword-only plain values (stages, config sections)."""

    key: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        dataclass(kw_only=True, eq=True, repr=False)(cls)
        cls._param_cache = None

    # -- parameters -------------------------------------------------------------------------
    @classmethod
    def params_info(cls) -> list[ParamInfo]:
        if cls.__dict__.get("_param_cache") is None:
            hints = typing.get_type_hints(cls)
            infos = []
            for f in dataclasses.fields(cls):
                if f.name.startswith("_"):
                    continue
                default = f.default
                if default is MISSING and f.default_factory is not MISSING:  # type: ignore[misc]
                    default = f.default_factory()  # type: ignore[misc]
                m = f.metadata
                infos.append(ParamInfo(f.name, hints.get(f.name, Any), default, m.get("help", ""),
                                       m.get("ge"), m.get("le"), m.get("gt"), m.get("lt")))
            cls._param_cache = infos
        return cls._param_cache

    @classmethod
    def param_names(cls) -> list[str]:
        return [p.name for p in cls.params_info()]

    def __post_init__(self) -> None:
        for p in self.params_info():
            self._check_param(p, getattr(self, p.name))
        object.__setattr__(self, "_lock", threading.RLock())
        self.validate()

    def _check_param(self, p: ParamInfo, value: Any) -> None:
        label = self.key or type(self).__name__
        if not check_value(value, p.type):
            choices = p.choices
            if choices is not None:
                raise ConfigError(f"'{label}': parameter '{p.name}' is {value!r}; valid: "
                                  f"{', '.join(map(str, choices))}.{did_you_mean(str(value), map(str, choices))}")
            raise ConfigError(f"'{label}': parameter '{p.name}' must be {p.type_name()}, got "
                              f"{type(value).__name__} {_short(value)}")
        bad = _bad_plain(value)
        if bad:
            raise ConfigError(f"'{label}': parameter '{p.name}' {bad}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = ((p.ge is None or value >= p.ge) and (p.le is None or value <= p.le)
                  and (p.gt is None or value > p.gt) and (p.lt is None or value < p.lt))
            if not ok:
                raise ConfigError(f"'{label}': parameter '{p.name}' is {value!r}, out of range: "
                                  f"must be {p.range_text()}.")
            if isinstance(value, int) and p.le is None and p.lt is None and abs(value) > MAX_INT_PARAM:
                raise ConfigError(f"'{label}': parameter '{p.name}' is {value!r}, out of range: integer "
                                  f"parameters must be within +-{MAX_INT_PARAM:,} (32-bit).")

    def validate(self) -> None:
        """Hook for checks across parameters; raise ConfigError naming the parameter."""

    def config(self) -> dict[str, Any]:
        """The constructor arguments, as plain values (nested stages as their configs)."""
        out: dict[str, Any] = {}
        for p in self.params_info():
            out[p.name] = _plain(getattr(self, p.name))
        return out

    def changed_config(self) -> dict[str, Any]:
        """Only the arguments that differ from their defaults (what YAML shows)."""
        out = {}
        for p in self.params_info():
            v = getattr(self, p.name)
            if p.required or _plain(v) != _plain(p.default):
                out[p.name] = _plain(v)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.changed_config())
        return f"{type(self).__name__}({args})"

    # -- pickling drops loaded state -----------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {p.name: getattr(self, p.name) for p in self.params_info()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_lock", threading.RLock())


def _plain(v: Any) -> Any:
    if isinstance(v, Configurable):
        return {v.key: v.changed_config()} if v.key else v.config()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class Stage(Configurable):
    """A pipeline stage: maps a batch of records to a batch of records.

    Class attributes ``input_kind``/``output_kind`` name the batch kinds (documents, chunks,
    queries, rankings, answers); :meth:`needs` and :meth:`provides` name the fields on hits
    so that a pipeline is checked when it is built, before any model loads.
    """

    input_kind: ClassVar[str] = RANKINGS
    output_kind: ClassVar[str] = RANKINGS

    # Loaded state and run context are plain private attributes, never annotated (an annotation
    # would make them dataclass fields, i.e. configuration). They are set by ``_setup()`` (models,
    # indexes) or by :meth:`bind_context` (the pipeline's folder and progress setting), read as
    # ``self._name``, excluded from equality and repr, and dropped when pickled or copied with
    # ``dataclasses.replace`` -- ``setup()`` loads them again. Class-level defaults below (and in
    # subclasses, for state read before setup) make every such read safe.
    _ready = False          # set by setup() once _setup() has run
    _base_dir = None        # folder relative paths in parameters are resolved against (the pipeline file's)
    _progress = None        # show progress bars: True/False, or None = when stderr is a terminal

    def bind_context(self, *, base_dir: Any = MISSING, progress: Any = MISSING) -> "Stage":
        """Set the run context (not configuration): the folder relative paths resolve against, and
        whether long work shows progress bars (what is not given is kept). Pipelines call this."""
        if base_dir is not MISSING:
            self._base_dir = base_dir
        if progress is not MISSING:
            self._progress = progress
        return self

    def needs(self) -> frozenset[str]:
        return frozenset()

    def provides(self) -> frozenset[str]:
        return frozenset()

    # -- lifecycle -----------------------------------------------------------------------------
    def setup(self) -> "Stage":
        """Load models/indexes. Safe to call twice and from several threads."""
        if self._ready:
            return self
        with self._lock:
            if not self._ready:
                self._setup()
                self._ready = True
        return self

    def _setup(self) -> None:
        """Override to load heavy state into private attributes."""

    def __call__(self, batch: Sequence[Any]) -> list[Any]:
        batch = list(batch)
        if not batch:
            return []
        if self.input_kind == CHUNKS:  # a document is indexed as one chunk spanning all its text
            from .records import as_chunks

            batch = as_chunks(batch)
        self.setup()
        return list(self.run(batch))

    def run(self, batch: list[Any]) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- composition ---------------------------------------------------------------------------
    def __rshift__(self, other: Any):
        from .pipeline import Pipeline

        return Pipeline([self]) >> other

    def __rrshift__(self, other: Any):
        from .pipeline import Pipeline

        return Pipeline(_as_stages(other)) >> self

    def __mod__(self, k: int):
        from .pipeline import Pipeline

        return Pipeline([self]) % k

    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


class Retriever(Stage):
    """Base of retrievers: queries -> rankings; hits carry text (and title) when ``self.text`` is true."""

    input_kind = QUERIES
    output_kind = RANKINGS

    def provides(self) -> frozenset[str]:
        return frozenset({"doc_id", "chunk_id", "score", "rank"} | ({"text", "title"} if getattr(self, "text", False)
                                                                   else set()))

    def search(self, text: str) -> Any:
        """Retrieve for one query given as text; returns its Ranking."""
        from .pipeline import Pipeline

        return Pipeline([self]).search(text)


class Generator(Stage):
    """Base of generators: rankings (with passage text) -> answers with citations."""

    input_kind = RANKINGS
    output_kind = ANSWERS

    def needs(self) -> frozenset[str]:
        return frozenset({"text"})

    def provides(self) -> frozenset[str]:
        return frozenset({"answer", "citations"})


def _as_stages(x: Any) -> list[Stage]:
    from .pipeline import Pipeline

    if isinstance(x, Pipeline):
        return list(x.stages)
    if isinstance(x, Stage):
        return [x]
    raise PipelineError(f"cannot compose {type(x).__name__} with a stage; use a Stage or Pipeline")
