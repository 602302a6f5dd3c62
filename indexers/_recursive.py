"""LangChain's recursive character splitting, on spans, so every chunk has exact offsets.

This follows ``langchain_text_splitters.RecursiveCharacterTextSplitter`` (its default
``keep_separator=True``, i.e. "start": the separator starts the next piece, or "end": it ends the
piece before; ``strip_whitespace=True``; length = characters):

1. take the first separator that occurs in the text (``""`` means: split into characters);
2. split the text before (or after) each occurrence of it;
3. pieces shorter than ``chunk_size`` are merged greedily into chunks of at most ``chunk_size``
   characters, keeping up to ``chunk_overlap`` characters of trailing pieces at the start of the
   next chunk; a piece of ``chunk_size`` or more is split again with the remaining separators.

LangChain joins the merged piece *strings*; because the separator is kept on each piece, the join
of consecutive pieces is exactly the text between the first piece's start and the last piece's
end, so here a chunk is that span, stripped of surrounding whitespace. The chunk texts equal
LangChain's output (tested against it when ``langchain-text-splitters`` is installed); the
offsets are exact where LangChain's ``add_start_index`` re-finds each chunk with ``str.find``.
One deliberate difference: a piece that cannot be split further is stripped and dropped when it
is only whitespace (LangChain emits it unstripped).
"""
from __future__ import annotations

import re
from collections import deque

Span = tuple[int, int]
DEFAULT_SEPARATORS = ("\n\n", "\n", ". ", " ", "")


def _strip(text: str, a: int, b: int) -> Span | None:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return (a, b) if b > a else None


def _split_keeping(text: str, a: int, b: int, sep: str, keep: str) -> list[Span]:
    """Pieces of text[a:b] cut before (keep="start") or after (keep="end") each separator."""
    if not sep:
        return [(i, i + 1) for i in range(a, b)]
    at = [m.start() if keep == "start" else m.end() for m in re.finditer(re.escape(sep), text[a:b])]
    cuts = [a] + [a + s for s in at] + [b]
    return [(x, y) for x, y in zip(cuts, cuts[1:]) if y > x]


def recursive_split(text: str, chunk_size: int, chunk_overlap: int,
                    separators: tuple[str, ...] | list[str] = DEFAULT_SEPARATORS,
                    keep_separator: str = "start") -> list[Span]:
    """Chunk spans of ``text`` as LangChain's RecursiveCharacterTextSplitter would cut them."""
    seps = list(separators) or [""]

    def merge(pieces: list[Span]) -> list[Span]:
        out: list[Span] = []
        cur: deque[Span] = deque()
        total = 0
        for d in pieces:
            n = d[1] - d[0]
            if total + n > chunk_size:
                if cur:
                    s = _strip(text, cur[0][0], cur[-1][1])
                    if s is not None:
                        out.append(s)
                    while total > chunk_overlap or (total + n > chunk_size and total > 0):
                        total -= cur[0][1] - cur[0][0]
                        cur.popleft()
            cur.append(d)
            total += n
        if cur:
            s = _strip(text, cur[0][0], cur[-1][1])
            if s is not None:
                out.append(s)
        return out

    def split(a: int, b: int, separators: list[str]) -> list[Span]:
        separator, rest = separators[-1], []
        for i, s in enumerate(separators):
            if not s:
                separator = s
                break
            if text.find(s, a, b) != -1:
                separator, rest = s, separators[i + 1:]
                break
        final: list[Span] = []
        good: list[Span] = []
        for piece in _split_keeping(text, a, b, separator, keep_separator):
            if piece[1] - piece[0] < chunk_size:
                good.append(piece)
                continue
            if good:
                final.extend(merge(good))
                good = []
            if not rest:
                s = _strip(text, *piece)
                if s is not None:
                    final.append(s)
            else:
                final.extend(split(piece[0], piece[1], rest))
        if good:
            final.extend(merge(good))
        return final

    return split(0, len(text), seps)
