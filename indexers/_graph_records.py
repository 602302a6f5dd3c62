"""Extraction records for ``indexer.graph``: LightRAG's text record format, its prompt, a robust parser.

The LLM is asked for one record per line (LightRAG 1.5's format, tuple delimiter ``<|#|>``)::

    entity<|#|>Entity Name<|#|>entity_type<|#|>description
    relation<|#|>Source Entity<|#|>Target Entity<|#|>keyword one, keyword two<|#|>description
    <|COMPLETE|>

:func:`parse_records` turns a reply into an :class:`Extraction` and never raises: records with the
wrong number of fields, self-loops, empty names, empty descriptions or invalid types are dropped and
*counted* in ``Extraction.dropped``; corrupted delimiters (``<|#>``, ``<#|>``, ``<|>`` ...), records
run together on one line and relation rows mis-prefixed ``entity`` are repaired and counted in
``Extraction.repaired``. The prompt text is ragkit's own, written after LightRAG's record format
and instructions (the paper's Figure/Appendix prompt and lightrag-hku 1.5's ``prompt.py``).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any


TUPLE = "<|#|>"
COMPLETE = "<|COMPLETE|>"
MAX_NAME_CHARS = 256

DEFAULT_ENTITY_TYPES = ["Person", "Creature", "Organization", "Location", "Event", "Concept", "Method",
                        "Content", "Data", "Artifact", "NaturalObject"]

SYSTEM_PROMPT = """You build a knowledge graph. From the text in the user message, extract the entities and the relationships between them.

Entities: for each clearly defined entity give
- its name (title case when the name has no case of its own; name each entity the same way every time),
- its type, one of: {entity_types} (use Other when none fits),
- a short description of the entity based only on the text.

Relationships: for each direct, clearly stated relationship between two of the extracted entities give
- the source entity and the target entity (named exactly as in the entity rows),
- one or more keywords summarising the relationship, separated by commas,
- a short description of how the two are related.
Split a statement about three or more entities into pairs. Relationships are undirected: do not repeat a pair in the other order.

Output one record per line, entities first, then relationships, and nothing else:
entity{tuple}<entity name>{tuple}<entity type>{tuple}<entity description>
relation{tuple}<source entity>{tuple}<target entity>{tuple}<keywords>{tuple}<relationship description>
An entity row has exactly 4 parts and a relation row exactly 5, separated by {tuple}; never use {tuple} inside a field.
Write names, keywords and descriptions in {language}, in the third person, without pronouns such as "he" or "this text"; keep proper nouns in their original language.
When every entity and relationship is written, output {complete} on its own line.

Example of the format (placeholders, not data):
entity{tuple}<entity name>{tuple}<entity type>{tuple}<entity description>
relation{tuple}<source entity>{tuple}<target entity>{tuple}<keywords>{tuple}<relationship description>
{complete}"""

USER_PROMPT = """Extract the entities and relationships from the text below, in the record format of the instructions. Output only the records, then {complete}.

Text:
```
{text}
```

Records:"""

# ``prompt: fewshot``: a shorter instruction and one worked example as a previous chat turn (LightRAG's
# own prompt carries worked examples too), for small models that copy the shape of an answer better
# than they follow a specification. The example is ragkit's own text.
FEWSHOT_SYSTEM = """You extract a knowledge graph from a text. Write one record per line and nothing else:
entity{tuple}<name>{tuple}<type>{tuple}<description>
relation{tuple}<source name>{tuple}<target name>{tuple}<keywords>{tuple}<description>
Types: {entity_types}. Only use names that occur in the text. Write in {language}. End with {complete}."""

FEWSHOT_TEXT = ("The Eiffel Tower is a wrought-iron tower in Paris. It was designed by the engineering company of "
                "Gustave Eiffel and completed in 1889 for the World's Fair.")

FEWSHOT_RECORDS = [
    ("entity", "Eiffel Tower", "Artifact", "The Eiffel Tower is a wrought-iron tower in Paris, completed in 1889."),
    ("entity", "Paris", "Location", "Paris is the city where the Eiffel Tower stands."),
    ("entity", "Gustave Eiffel", "Person", "Gustave Eiffel led the engineering company that designed the Eiffel Tower."),
    ("entity", "World's Fair", "Event", "The World's Fair of 1889 was the occasion for which the Eiffel Tower was built."),
    ("relation", "Eiffel Tower", "Paris", "location", "The Eiffel Tower stands in Paris."),
    ("relation", "Gustave Eiffel", "Eiffel Tower", "design, engineering", "Gustave Eiffel's company designed the Eiffel Tower."),
    ("relation", "Eiffel Tower", "World's Fair", "construction, event", "The Eiffel Tower was completed for the 1889 World's Fair."),
]

FEWSHOT_USER = """Text:
{text}

Records:"""

GLEAN_PROMPT = """Some entities and relationships of the text were missed or badly formatted in your last answer. Output only the missing or corrected ones, in the same record format, then {complete}.

Records:"""

SUMMARY_PROMPT = """Merge the descriptions below of the {kind} "{name}" into one coherent summary in {language}.
Keep every important fact from every description; if descriptions conflict, say so neutrally. Write in the third person and name the {kind} at the start. Use at most {max_words} words. Output only the summary.

Descriptions:
{descriptions}

Summary:"""


def prompt_hash(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:16]


@dataclass
class Extraction:
    """What one chunk yielded: entity and relation records plus parse statistics."""

    entities: list[dict[str, Any]] = field(default_factory=list)    # name, type, description
    relations: list[dict[str, Any]] = field(default_factory=list)   # source, target, keywords, description, weight
    dropped: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"e": self.entities, "r": self.relations}
        if self.dropped:
            out["dropped"] = self.dropped
        if self.repaired:
            out["repaired"] = self.repaired
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Extraction":
        return cls(list(d.get("e", [])), list(d.get("r", [])), dict(d.get("dropped", {})), dict(d.get("repaired", {})))

    def count(self, table: str, reason: str, n: int = 1) -> None:
        tgt = self.dropped if table == "dropped" else self.repaired
        tgt[reason] = tgt.get(reason, 0) + n

    def extend(self, other: "Extraction") -> None:
        """Append another window's records and counts."""
        self.entities += other.entities
        self.relations += other.relations
        self._add_counts(other)

    def _add_counts(self, other: "Extraction") -> None:
        for k, v in other.dropped.items():
            self.count("dropped", k, v)
        for k, v in other.repaired.items():
            self.count("repaired", k, v)

    def absorb(self, other: "Extraction") -> None:
        """LightRAG's gleaning merge: the gleaned records of a name replace the first pass's when the
        (first) gleaned description is longer; names the first pass missed are added."""
        self.entities = _glean(self.entities, other.entities, lambda e: e["name"].casefold())
        self.relations = _glean(self.relations, other.relations, _pair)
        self._add_counts(other)


def _glean(first: list[dict], gleaned: list[dict], key: Any) -> list[dict]:
    groups: dict[Any, list[dict]] = {}
    for r in first:
        groups.setdefault(key(r), []).append(r)
    new: dict[Any, list[dict]] = {}
    for r in gleaned:
        new.setdefault(key(r), []).append(r)
    for k, recs in new.items():
        old = groups.get(k)
        if old is None or len(recs[0]["description"]) > len(old[0]["description"]):
            groups[k] = recs
    return [r for recs in groups.values() for r in recs]


def _pair(r: dict[str, Any]) -> tuple[str, str]:
    a, b = r["source"].casefold(), r["target"].casefold()
    return (a, b) if a <= b else (b, a)


# delimiter corruptions seen in small-model output: <|#>, <#|>, <|##|>, <| # |>, <||>, <|>, |#|
_BROKEN_TUPLE = re.compile(r"<\s*\|\s*#+\s*>|<\s*#+\s*\|\s*>|<\s*\|\s*#{2,}\s*\|\s*>|<\s*\|\s+#\s+\|\s*>|<\s*\|\s*\|\s*>|<\|>|(?<!<)\|#\|(?!>)")
_COMPLETE = re.compile(r"<\|?\s*COMPLETE\s*\|?>", re.IGNORECASE)
_RUN_TOGETHER = re.compile(re.escape(TUPLE) + r"\s*(?=(?:entity|relation(?:ship)?)\s*" + re.escape(TUPLE) + ")", re.IGNORECASE)
_OLD_RECORD_SEP = re.compile(r"##\s*(?=\(?\s*[\"']?(?:entity|relation))", re.IGNORECASE)
_BAD_TYPE_CHARS = set("'()<>|/\\")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")


def clean_text(s: str) -> str:
    """Control characters removed, white space folded to single spaces."""
    return _SPACES.sub(" ", _CONTROL.sub("", str(s))).strip()


def _clean_field(s: str) -> str:
    """A field with surrounding white space, quotes and markdown emphasis removed."""
    s = clean_text(s)
    prev = None
    while s != prev:
        prev = s
        s = s.strip().strip("\"'`*").strip()
    return s


def _split_records(text: str, ex: Extraction) -> list[str]:
    text = text.replace("\r\n", "\n")
    fixed, n = _BROKEN_TUPLE.subn(TUPLE, text)
    if n:
        ex.count("repaired", "broken_delimiter", n)
    fixed = _COMPLETE.sub("\n", fixed)
    fixed = _OLD_RECORD_SEP.sub("\n", fixed)  # LightRAG < 1.4 put '##' between records
    out = []
    for line in fixed.split("\n"):
        parts = _RUN_TOGETHER.split(line)
        if len(parts) > 1:
            ex.count("repaired", "records_on_one_line", len(parts) - 1)
        out += [p for p in (x.strip() for x in parts) if p]
    return out


def parse_records(text: str) -> Extraction:
    """Parse one LLM reply in LightRAG's record format (never raises; see the module docstring)."""
    ex = Extraction()
    if not isinstance(text, str):
        text = str(text)
    if not _COMPLETE.search(text):
        ex.count("dropped", "missing_completion_marker")
    for rec in _split_records(text, ex):
        rec = rec.strip()
        if rec.startswith("(") and rec.endswith(")"):
            rec = rec[1:-1].strip()  # LightRAG < 1.4 wrapped records in parentheses
        if TUPLE not in rec:
            continue  # prose, code fences, headings: not a record
        fields = [f for f in rec.split(TUPLE)]
        head = _clean_field(fields[0]).lower().strip("*-• ").strip()
        if head.startswith("entity") and len(fields) == 5:
            head = "relation"  # a relation row with the entity prefix (a known LLM slip)
            ex.count("repaired", "misprefixed_relation")
        if head.startswith("entity"):
            _entity(fields, ex)
        elif head.startswith("relation"):
            _relation(fields, ex)
        elif head.startswith("content_keywords"):
            continue
        else:
            ex.count("dropped", "unknown_record")
    return ex


def _name(raw: str, ex: Extraction) -> str | None:
    name = _clean_field(raw)
    if not name:
        ex.count("dropped", "empty_name")
        return None
    if len(name) > MAX_NAME_CHARS:
        ex.count("dropped", "name_too_long")
        return None
    return name


def _entity(fields: list[str], ex: Extraction) -> None:
    if len(fields) != 4:
        ex.count("dropped", "entity_wrong_field_count")
        return
    name = _name(fields[1], ex)
    if name is None:
        return
    etype = _clean_field(fields[2])
    if "," in etype:
        etype = next((t.strip() for t in etype.split(",") if t.strip()), "")
    etype = etype.replace(" ", "").lower()
    if not etype or _BAD_TYPE_CHARS & set(etype):
        ex.count("dropped", "invalid_entity_type")
        return
    desc = _clean_field(fields[3])
    if not desc:
        ex.count("dropped", "empty_description")
        return
    ex.entities.append({"name": name, "type": etype, "description": desc})


def _relation(fields: list[str], ex: Extraction) -> None:
    if len(fields) != 5:
        ex.count("dropped", "relation_wrong_field_count")
        return
    src, tgt = _name(fields[1], ex), _name(fields[2], ex)
    if src is None or tgt is None:
        return
    if src.casefold() == tgt.casefold():
        ex.count("dropped", "self_loop")
        return
    kws = [k.strip() for k in _clean_field(fields[3]).replace("，", ",").split(",")]
    desc = _clean_field(fields[4])
    if not desc:
        ex.count("dropped", "empty_description")
        return
    ex.relations.append({"source": src, "target": tgt, "keywords": [k for k in kws if k], "description": desc,
                         "weight": 1.0})


def format_system(entity_types: list[str], language: str) -> str:
    return SYSTEM_PROMPT.format(entity_types=", ".join(entity_types), language=language, tuple=TUPLE, complete=COMPLETE)


def format_user(text: str) -> str:
    return USER_PROMPT.format(text=text, complete=COMPLETE)


def format_glean() -> str:
    return GLEAN_PROMPT.format(complete=COMPLETE)


def format_summary(kind: str, name: str, descriptions: list[str], language: str, max_words: int) -> str:
    return SUMMARY_PROMPT.format(kind=kind, name=name, language=language, max_words=max_words,
                                 descriptions="\n".join(f"- {d}" for d in descriptions))


def format_fewshot(text: str, entity_types: list[str], language: str) -> list[tuple[str, str]]:
    """The ``fewshot`` prompt: system instruction, the worked example as a user/assistant turn, the text."""
    example = "\n".join(TUPLE.join(r) for r in FEWSHOT_RECORDS) + "\n" + COMPLETE
    return [("system", FEWSHOT_SYSTEM.format(entity_types=", ".join(entity_types), language=language, tuple=TUPLE,
                                             complete=COMPLETE)),
            ("user", FEWSHOT_USER.format(text=FEWSHOT_TEXT)), ("assistant", example),
            ("user", FEWSHOT_USER.format(text=text))]
