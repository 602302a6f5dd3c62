"""Reading and writing ``indexer.graph`` folders: graph JSON, vector tables, state for updates, cached loading.

See :mod:`ragkit.indexers.graph` for the folder layout. ``graph.json`` is networkx node-link JSON
(``networkx.node_link_graph(data, edges="edges")`` reads it), kept lean: a node's or edge's
``descriptions`` list is left out when ``description`` is just their newline join and restored on load.
"""
from __future__ import annotations

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


def _full(attrs: dict[str, Any]) -> dict[str, Any]:
    if "descriptions" not in attrs:
        desc = attrs.get("description", "")
        attrs["descriptions"] = desc.split("\n") if desc else []
    return attrs


def _read_graph(folder: Path) -> Any:
    """Read graph.json; builds the graph directly (several times faster than ``node_link_graph``)."""
    import networkx as nx

    f = folder / "graph.json"
    try:
        data = json.loads(f.read_bytes())
        g = nx.Graph()
        g.graph.update(data.get("graph", {}))
        g.add_nodes_from((a.pop("id"), _full(a)) for a in data["nodes"])
        g.add_edges_from((a.pop("source"), a.pop("target"), _full(a)) for a in data["edges"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IndexArtifactError(f"{f}: missing or corrupt graph ({exc}); rebuild the index.") from None
    return g


def _read_vectors(folder: Path, dim: int, mmap: bool = False) -> dict[str, VectorTable]:
    try:
        keys = json.loads((folder / "vector_keys.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexArtifactError(f"{folder / 'vector_keys.json'}: missing or corrupt ({exc}); rebuild the index.") \
            from None
    out = {}
    for name in ("entities", "relations", "chunks"):
        k = keys.get(name, [])
        if name == "relations":
            k = [tuple(x) for x in k]
        v = load_array(folder, f"{name}.npy", mmap=mmap, dtype="float32", ndim=2)
        if v.ndim != 2 or len(v) != len(k) or (len(k) and v.shape[1] != dim):
            raise IndexArtifactError(f"{folder / (name + '.npy')}: {v.shape} vectors for {len(k)} keys of "
                                     f"dimension {dim}; the index is inconsistent, rebuild it.")
        out[name] = FastVectorTable(list(k), v)
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
    if extractor:
        stored = read_params(folder, expect_key=KEY).get("extractor")
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
    vecs = _read_vectors(folder, enc.dim)
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
