"""A rule-based sentence splitter with exact character offsets (no NLP models).

A sentence ends after a terminator (``.``, ``!``, ``?``, ``…``, runs of them, plus closing quotes,
brackets and a bracketed citation such as ``[1]`` or ``[citation needed]``) that is followed by
whitespace or the end of the text, unless

- the period ends a known abbreviation (``Dr.``, ``e.g.``, ``vs.``, ``et al.``, ``Corp.``), a dotted
  acronym or initials (``U.S.``, ``J.E.``, ``p.m.``), a single capital initial (``J. Smith``), a
  numeric abbreviation before a number (``No. 5``, ``Fig. 3``, ``pp. 10``), or a list number at the
  start of a line or after a colon (``1. First``);
- in cased text, the next word starts with a lower-case letter (``approx. five``,
  ``"Hi!" she said``). Text without any upper-case letter (lower-cased corpora such as
  Cranfield) skips this rule, otherwise it would never split.

CJK terminators (``。！？``) end a sentence even without a following space, and a blank line
(paragraph break) always ends one. Decimals (``3.14``) never split because no space follows the
period. Every sentence is returned as a ``(start, end)`` span with surrounding whitespace trimmed,
so the spans cover every non-whitespace character of the text, in order, without overlap.
Measured against pysbd on real passages in ``benchmarks/results/chunkers.md``.
"""
from __future__ import annotations

import re

Span = tuple[int, int]

# abbreviations after which a period never ends a sentence (lower case, without the final period);
# words that are also common English words (sun, sat, mar, wed, may) are deliberately absent
ALWAYS_ABBREV = frozenset("""
mr mrs ms mx dr prof sr jr st rev hon gen col lt sgt capt cmdr adm gov sen rep pres supt insp
e.g eg i.e ie cf vs viz al approx ca resp incl esp dept univ assn bros messrs mme mlle
inc ltd corp co llc plc v jan feb apr jun jul aug sep sept oct nov dec tue tues thu thur thurs fri
""".split())
# abbreviations that do not end a sentence when a number follows (No. 5, Fig. 3, pp. 10-12)
NUMERIC_ABBREV = frozenset("c no nos nr fig figs eq eqs p pp vol vols ch chap sec sect art para ref refs tab ex op".split())

_CJK_TERMS = "。！？"
_CANDIDATE = re.compile(r"([.!?…]+|[。！？]+)([\"'”’»)\]}]*(?:\[[^\[\]\n]{1,40}\])?)")
_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n")
_OPENERS = "([{\"'“‘«"
_DOTTED = re.compile(r"(?:[^\W\d_]{1,2}\.)+[^\W\d_]{1,2}")


def _is_boundary(text: str, m: re.Match, cased: bool) -> bool:
    term = m.group(1)
    end = m.end()
    if term[0] in _CJK_TERMS:
        return True
    n = len(text)
    if end < n and not text[end].isspace():
        return False  # 3.14, example.com, "a.b"
    j = end
    while j < n and text[j].isspace():
        j += 1
    if j >= n:
        return True
    nxt = text[j]
    lower_next = cased and nxt.islower()
    if term != ".":
        return not lower_next
    # the word the period ends
    i = m.start()
    k = i
    while k > 0 and not text[k - 1].isspace():
        k -= 1
    word = text[k:i].lstrip(_OPENERS)
    if not word:
        return True  # a detached period: "end . next"
    low = word.lower()
    if low in ALWAYS_ABBREV or _DOTTED.fullmatch(word):
        return False
    if low in NUMERIC_ABBREV and nxt.isdigit():
        return False
    if len(word) == 1 and word.isalpha() and (word.isupper() or lower_next):
        return False  # an initial: J. Smith
    if word.isdigit() and len(word) <= 3:
        lo = max(0, k - 80)
        nl = text.rfind("\n", lo, k)
        before = text[nl + 1:k].rstrip() if (nl >= 0 or lo == 0) else "x"
        if not before or before.endswith((":", ";", ".", "!", "?")):
            return False  # an enumerated list item: "1. First", "are: 1. The", "one. 2. Two"
    return not lower_next


def split_sentences(text: str) -> list[Span]:
    """Sentence spans ``(start, end)`` of ``text``, whitespace-trimmed, in order."""
    cuts = {0, len(text)}
    cased = text != text.lower()
    for m in _CANDIDATE.finditer(text):
        if _is_boundary(text, m, cased):
            cuts.add(m.end())
    for m in _PARAGRAPH.finditer(text):
        cuts.add(m.start())
    out: list[Span] = []
    bounds = sorted(cuts)
    for a, b in zip(bounds, bounds[1:]):
        s, e = a, b
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            out.append((s, e))
    return out
