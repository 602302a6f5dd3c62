"""Reading and writing ``indexer.graph`` folders: graph JSON, vector tables, state for updates, cached loading.

See :mod:`ragkit.indexers.graph` for the folder layout. ``graph.json`` is networkx node-link JSON
(``networkx.node_link_graph(data, edges="edges")`` reads it), kept lean: a node's or edge's
``descriptions`` list is left out when ``description`` is just their newline join and restored on load.
"""
from __future__ import annotations

import contextlib
import gc
import json
import threading
from pathlib import Path
from typing import Any

from ragkit.artifacts import DocStore, load_array, read_params, resolve_path
from ragkit.errors import IndexArtifactError

from ._graph_records import Extraction
from ._graph_store import FastVectorTable, GraphIndex, VectorTable

KEY = "indexer.graph"
FORMAT = 1


def require_networkx() -> Any:
    from ragkit._deps import require

    return require("networkx", "indexer.graph", extra="graph")


class LoadedState:
    def __init__(self, params: dict, state: Any, vectors: dict[str, VectorTable], titles: dict[str, str]) -> None:
        self.params, self.state, self.vectors, self.titles = params, state, vectors, titles


def _lean(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as stored: ``descriptions`` left out when ``description`` is just their join."""
    d = attrs.get("descriptions")
    if d is not None and all("\n" not in x for x in d) and "\n".join(d) == attrs.get("description"):
        attrs = {k: v for k, v in attrs.items() if k != "descriptions"}
    return attrs


def _dump_graph(g: Any) -> bytes:
    """networkx node-link JSON (``networkx.node_link_graph(data, edges="edges")`` reads it back)."""
    data = {"directed": False, "multigraph": False, "graph": dict(g.graph),
            "nodes": [{**_lean(a), "id": n} for n, a in g.nodes(data=True)],
            "edges": [{**_lean(a), "source": u, "target": v} for u, v, a in g.edges(data=True)]}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@contextlib.contextmanager
def _no_gc():
    """Cyclic GC paused while a large graph is decoded and built: the millions of new dicts and lists
    otherwise trigger repeated full collections (most of the load time), and none of them is garbage."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _loads(raw: bytes) -> Any:
    """JSON decode with orjson when installed (several times faster on a large graph), else json."""
    try:
        import orjson
    except ImportError:   # pragma: no cover - orjson is in the graph extra
        return json.loads(raw)
    return orjson.loads(raw)


def _read_graph(folder: Path) -> Any:
    """Read graph.json (networkx node-link JSON) into an undirected ``networkx.Graph``.

    The graph is built directly: node and edge attribute dicts are the decoded JSON objects (the
    ``id``/``source``/``target`` keys popped, ``descriptions`` restored where the writer left it
    out) and are placed in networkx's adjacency in the file's order, exactly as
    ``add_nodes_from`` / ``add_edges_from`` would place them, without their per-item overhead."""
    import networkx as nx

    f = folder / "graph.json"
    with _no_gc():
        try:
            data = _loads(f.read_bytes())
            g = nx.Graph()
            g.graph.update(data.get("graph", {}))
            node, adj = g._node, g._adj
            for a in data["nodes"]:
                n = a.pop("id")
                if "descriptions" not in a:
                    d = a.get("description", "")
                    a["descriptions"] = d.split("\n") if d else []
                if n in node:
                    node[n].update(a)
                else:
                    node[n] = a
                    adj[n] = {}
            for a in data["edges"]:
                u, v = a.pop("source"), a.pop("target")
                if "descriptions" not in a:
                    d = a.get("description", "")
                    a["descriptions"] = d.split("\n") if d else []
                if u not in node:
                    node[u], adj[u] = {}, {}
                if v not in node:
                    node[v], adj[v] = {}, {}
                old = adj[u].get(v)
                if old is not None:
                    old.update(a)
                else:
                    adj[u][v] = adj[v][u] = a
            clear = getattr(nx, "_clear_cache", None)   # networkx >= 3.3 caches backend conversions per graph
            if clear is not None:
                clear(g)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IndexArtifactError(f"{f}: missing or corrupt graph ({exc}); rebuild the index.") from None
    return g


def _vector_keys(vecs: dict[str, VectorTable]) -> dict[str, Any]:
    """What vector_keys.json stores: entity and chunk keys as lists; relation keys as row pairs into
    the entity keys (``relation_rows``) when both ends are entity keys, else as explicit pairs."""
    ekeys = vecs["entities"].keys
    pos = {k: i for i, k in enumerate(ekeys)}
    rows = [[pos.get(a), pos.get(b)] for a, b in vecs["relations"].keys]
    out: dict[str, Any] = {"entities": list(ekeys), "chunks": list(vecs["chunks"].keys)}
    if all(a is not None and b is not None for a, b in rows):
        out["relation_rows"] = rows
    else:
        out["relations"] = [list(k) for k in vecs["relations"].keys]
    return out


def _read_vectors(folder: Path, dim: int, mmap: bool = False) -> dict[str, VectorTable]:
    f = folder / "vector_keys.json"
    try:
        with _no_gc():
            keys = _loads(f.read_bytes())
            ekeys = keys.get("entities", [])
            if "relation_rows" in keys:
                rows = keys["relation_rows"]
                if rows and min(min(r) for r in rows) < 0:
                    raise ValueError("negative entity row in relation_rows")
                rkeys = [(ekeys[a], ekeys[b]) for a, b in rows]
            else:
                rkeys = [tuple(x) for x in keys.get("relations", [])]
    except (OSError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise IndexArtifactError(f"{f}: missing or corrupt ({exc}); rebuild the index.") from None
    out = {}
    for name, k in (("entities", ekeys), ("relations", rkeys), ("chunks", keys.get("chunks", []))):
        v = load_array(folder, f"{name}.npy", mmap=mmap, dtype="float32", ndim=2)
        if v.ndim != 2 or len(v) != len(k) or (len(k) and v.shape[1] != dim):
            raise IndexArtifactError(f"{folder / (name + '.npy')}: {v.shape} vectors for {len(k)} keys of "
                                     f"dimension {dim}; the index is inconsistent, rebuild it.")
        out[name] = FastVectorTable(k if isinstance(k, list) else list(k), v)
    return out


def load_state(folder: str | Path) -> LoadedState:
    """The mutable state of an index folder (graph, extractions, chunks, vectors) for updates."""
    from ._graph_merge import GraphState

    folder = Path(folder)
    params = read_params(folder, expect_key=KEY)
    _check_format(folder, params)
    store = DocStore.load(folder)
    state = GraphState()
    exs: dict[str, Extraction] = {}
    try:
        with open(folder / "extractions.jsonl", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                d = json.loads(line)
                exs[d["id"]] = Extraction.from_json(d)
    except (OSError, ValueError, KeyError) as exc:
        raise IndexArtifactError(f"{folder / 'extractions.jsonl'}: missing or corrupt ({exc}); rebuild the index.") \
            from None
    titles = {}
    for i, cid in enumerate(store.ids):
        if cid not in exs:
            raise IndexArtifactError(f"{folder}: chunk {cid!r} has no stored extraction; rebuild the index.")
        state.add(cid, store.doc_ids[i], store.text(i), exs[cid])
        t = store.title(i)
        if t:
            titles[cid] = t
    state.graph = _read_graph(folder)
    return LoadedState(params, state, _read_vectors(folder, int(params["dim"])), titles)


def _check_format(folder: Path, params: dict) -> None:
    if params.get("format") != FORMAT:
        raise IndexArtifactError(f"{folder}: graph index format {params.get('format')!r}, this ragkit reads "
                                 f"format {FORMAT}; rebuild the index.")


_CACHE: dict[str, tuple[tuple, GraphIndex]] = {}
_CACHE_LOCK = threading.Lock()


def _stamp(folder: Path) -> tuple:
    try:
        st = (folder / "params.json").stat()
    except OSError:
        return ()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _forget(folder: Path) -> None:
    with _CACHE_LOCK:
        _CACHE.pop(str(Path(folder).resolve()), None)


def load_graph_index(path: str | Path, *, model: str = "", extractor: str = "", device: str = "cpu",
                     base_dir: str | Path | None = None) -> GraphIndex:
    """Load an ``indexer.graph`` folder as a :class:`GraphIndex` (cached per folder until it is rewritten).

    ``encode`` is the index's own encoder (queries); ``model`` may name it again and ``extractor``
    (``spacy`` / ``llm``) the extractor the caller expects: either differing from the index is an
    IndexArtifactError. ``params`` is the folder's params.json (extractor, encoder, stats).
    """
    folder = resolve_path(path, base_dir)
    params = None
    if extractor:
        params = read_params(folder, expect_key=KEY)
        stored = params.get("extractor")
        if stored != extractor:
            raise IndexArtifactError(f"{folder}: graph index was built with the {stored!r} extractor, but "
                                     f"{extractor!r} was asked for. Rebuild the index with extractor: {extractor} "
                                     "or drop the setting.")
    key = str(folder.resolve())
    stamp = _stamp(folder)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == stamp and stamp and not model and device == "cpu":
            return hit[1]
    if params is None or _stamp(folder) != stamp:
        params = read_params(folder, expect_key=KEY)
    _check_format(folder, params)
    require_networkx()
    from ._encoder import Encoder
    from ragkit.models import resolve_model

    stored_id = params.get("model_id", "")
    if model:
        rid = resolve_model(model, base_dir=base_dir).id
        if rid != stored_id:
            raise IndexArtifactError(f"{folder}: graph index was built with encoder {stored_id!r}, asked for "
                                     f"{model!r} ({rid}). Rebuild the index with this encoder or drop 'model'.")
        name = model
    else:
        name = stored_id[5:] if stored_id.startswith("path:") else params.get("model", stored_id)
    enc = Encoder(name, device=device, normalize=True, cache=False, base_dir=base_dir)
    if enc.model_id != stored_id or enc.dim != int(params["dim"]):
        raise IndexArtifactError(f"{folder}: index vectors come from {stored_id!r} ({params['dim']}-d), but "
                                 f"{name!r} resolves to {enc.model_id!r} ({enc.dim}-d) here. Rebuild the index.")
    g = _read_graph(folder)
    store = DocStore.load(folder)
    texts = {cid: store.text(i) for i, cid in enumerate(store.ids)}
    docs = dict(zip(store.ids, store.doc_ids))
    vecs = _read_vectors(folder, enc.dim, mmap=True)   # read-only, paged in by the first searches
    if len(vecs["entities"].keys) != g.number_of_nodes() or len(vecs["relations"].keys) != g.number_of_edges():
        raise IndexArtifactError(f"{folder}: vector tables do not match the graph ({len(vecs['entities'].keys)} "
                                 f"entity vectors for {g.number_of_nodes()} nodes); rebuild the index.")
    titles = {cid: store.title(i) for i, cid in enumerate(store.ids) if store.title(i)}
    idx = GraphIndex(g, texts, docs, enc.encode_queries, vecs["entities"], vecs["relations"], vecs["chunks"], params,
                     titles)
    if not model and device == "cpu":
        with _CACHE_LOCK:
            _CACHE[key] = (stamp, idx)
    return idx
