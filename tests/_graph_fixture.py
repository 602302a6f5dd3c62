"""A small hand-made graph index (GraphIndex.from_parts + HashEmbedder) for the graph retriever tests."""
from __future__ import annotations

from ragkit.testing import HashEmbedder

CHUNKS = {
    "a#0": ("A", "Alice Smith was born in Paris. She studied physics at the Sorbonne."),
    "b#0": ("B", "Paris is the capital of France and its largest city."),
    "c#0": ("C", "Bob Jones works at Acme Corp in Berlin as an engineer."),
    "d#0": ("D", "Acme Corp builds rockets and satellites for space agencies."),
    "e#0": ("E", "France borders Germany. Berlin is the capital of Germany."),
    "f#0": ("F", "The Sorbonne is a university in Paris founded in 1257."),
}
ENTITIES = {
    "Alice Smith": ("PERSON", "A physicist born in Paris.", ["a#0"]),
    "Paris": ("GPE", "Capital of France.", ["a#0", "b#0", "f#0"]),
    "Sorbonne": ("ORG", "A university in Paris.", ["a#0", "f#0"]),
    "France": ("GPE", "A country in Europe.", ["b#0", "e#0"]),
    "Bob Jones": ("PERSON", "An engineer at Acme Corp.", ["c#0"]),
    "Acme Corp": ("ORG", "A rocket and satellite maker.", ["c#0", "d#0"]),
    "Berlin": ("GPE", "Capital of Germany.", ["c#0", "e#0"]),
    "Germany": ("GPE", "A country bordering France.", ["e#0"]),
}
RELATIONS = [
    ("Alice Smith", "Paris", ["born in"], "Alice Smith was born in Paris.", 1.0, ["a#0"]),
    ("Alice Smith", "Sorbonne", ["studied at"], "Alice Smith studied physics at the Sorbonne.", 1.0, ["a#0"]),
    ("Paris", "France", ["capital"], "Paris is the capital of France.", 2.0, ["b#0"]),
    ("Sorbonne", "Paris", ["located in"], "The Sorbonne is a university in Paris.", 1.0, ["f#0"]),
    ("Bob Jones", "Acme Corp", ["works at"], "Bob Jones works at Acme Corp.", 1.0, ["c#0"]),
    ("Acme Corp", "Berlin", ["located in"], "Acme Corp is in Berlin.", 1.0, ["c#0"]),
    ("France", "Germany", ["borders"], "France borders Germany.", 1.0, ["e#0"]),
    ("Berlin", "Germany", ["capital"], "Berlin is the capital of Germany.", 1.0, ["e#0"]),
]


def make_graph_index(params: dict | None = None):
    import networkx as nx

    from ragkit.indexers._graph_store import GraphIndex, normalize_name

    g = nx.Graph()
    for name, (typ, desc, src) in ENTITIES.items():
        g.add_node(normalize_name(name), name=name, entity_type=typ, description=desc, source_ids=list(src))
    for a, b, kw, desc, w, src in RELATIONS:
        g.add_edge(normalize_name(a), normalize_name(b), keywords=list(kw), description=desc, weight=w,
                   source_ids=list(src))
    enc = HashEmbedder(dim=512)
    return GraphIndex.from_parts(g, {c: t for c, (_, t) in CHUNKS.items()}, {c: d for c, (d, _) in CHUNKS.items()},
                                 lambda texts: enc.encode(list(texts)), params or {"extractor": "spacy", "model": "hash"})
