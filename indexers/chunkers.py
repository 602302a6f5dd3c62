"""Chunkers: split documents (or chunks) into chunks with exact character offsets.

Three stages, all ``chunks -> chunks`` (they also accept Documents, so they can come first in an
``index:`` section):

- ``chunker.fixed`` (:class:`FixedChunker`): windows of ``size`` tokens overlapping by ``overlap``;
- ``chunker.sentence`` (:class:`SentenceChunker`): whole sentences packed up to ``max_tokens``;
- ``chunker.recursive`` (:class:`RecursiveChunker`): LangChain's recursive character splitting.

Every output chunk satisfies: ``chunk_id == f"{doc_id}#{i}"`` (``i`` counts the chunks of that
document in the batch, from 0), ``chunk.text == document.text[chunk.start:chunk.end]``, and
``meta`` is the document's meta (title included). A Chunk given as input is re-chunked and the
offsets stay relative to its source document (``start = chunk.start + local offset``). Together
the chunks of a document cover every non-whitespace character of it; a document that is only
whitespace gives no chunk.

Tokens are counted with a named tokenizer (see :mod:`ragkit.indexers._offsets`): ``whitespace``,
``regex`` or a Hugging Face tokenizer (``minilm``, a folder, a cached hub id), loaded in
:meth:`setup`, so a window of ``size`` tokens matches what an embedder of that vocabulary sees.
"""
from __future__ import annotations

import sys
from bisect import bisect_left
from typing import Any, Iterable, Literal

from ragkit.errors import ConfigError, StageInputError
from ragkit.records import Chunk, Document
from ragkit.registry import register
from ragkit.stage import CHUNKS, Stage, param

from ._offsets import BUILTIN, Spans, get_tokenizer
from ._recursive import DEFAULT_SEPARATORS, recursive_split
from ._sentences import split_sentences

__all__ = ["FixedChunker", "SentenceChunker", "RecursiveChunker", "token_windows"]

_TOKENIZER_HELP = (f"token counting: {', '.join(BUILTIN)}, 'minilm', or a Hugging Face tokenizer "
                   f"(folder with tokenizer.json, or a hub id in the local cache)")


class _Chunker(Stage):
    """Shared record handling; subclasses implement ``_spans(text) -> [(start, end)]``."""

    input_kind = CHUNKS
    output_kind = CHUNKS

    def _spans(self, text: str) -> Spans:  # pragma: no cover - abstract
        raise NotImplementedError

    def _tokenize(self, text: str) -> Spans:
        return self._tok(text)

    def _load_tokenizer(self, name: str) -> None:
        self._tok = get_tokenizer(name, self._base_dir)

    def split(self, text: str) -> list[str]:
        """Convenience: the chunk texts of one string."""
        self.setup()
        return [text[s:e] for s, e in self._spans(text)]

    def run(self, batch: list[Any]) -> list[Chunk]:
        out: list[Chunk] = []
        counters: dict[str, int] = {}
        for n, rec in enumerate(_progress(batch, self)):
            if isinstance(rec, Chunk):
                text, base, doc_id = rec.text, rec.start, rec.doc_id
            elif isinstance(rec, Document):
                text, base, doc_id = rec.text, 0, rec.doc_id
            else:
                raise StageInputError(f"'{self.key}': record #{n + 1} is a {type(rec).__name__}; "
                                      f"expected a Document or a Chunk.")
            if not isinstance(text, str):
                raise StageInputError(f"'{self.key}': record #{n + 1} ({doc_id!r}) has text of type "
                                      f"{type(text).__name__}; expected str.")
            meta = dict(rec.meta)
            i = counters.get(doc_id, 0)
            for s, e in self._spans(text):
                out.append(Chunk(f"{doc_id}#{i}", doc_id, text[s:e], base + s, base + e, meta))
                i += 1
            counters[doc_id] = i
        return out


def _progress(batch: list[Any], stage: Stage) -> Iterable[Any]:
    show = stage._progress
    if show is None:
        show = len(batch) >= 1000 and sys.stderr.isatty()
    if not show:
        return batch
    from tqdm.auto import tqdm

    return tqdm(batch, desc=stage.key, unit="doc", leave=False)


def token_windows(tokens: Spans, size: int, overlap: int) -> Spans:
    """Character spans of windows of ``size`` tokens, each starting ``size - overlap`` after the last."""
    n = len(tokens)
    if n == 0:
        return []
    ends, m = [], 0
    for _, e in tokens:  # running max: tokens of some tokenizers overlap
        m = max(m, e)
        ends.append(m)
    step = size - overlap
    out: Spans = []
    i = 0
    while True:
        j = min(i + size, n)
        out.append((tokens[i][0], ends[j - 1]))
        if j >= n:
            return out
        i += step


@register("chunker.fixed")
class FixedChunker(_Chunker):
    """Fixed windows of `size` tokens, consecutive windows sharing `overlap` tokens."""

    size: int = param(200, ge=1, help="tokens per chunk")
    overlap: int = param(0, ge=0, help="tokens shared by consecutive chunks (< size)")
    tokenizer: str = param("whitespace", help=_TOKENIZER_HELP)

    def validate(self) -> None:
        if self.overlap >= self.size:
            raise ConfigError(f"'{self.key}': parameter 'overlap' ({self.overlap}) must be smaller than "
                              f"'size' ({self.size}).")

    def _setup(self) -> None:
        self._load_tokenizer(self.tokenizer)

    def _spans(self, text: str) -> Spans:
        return token_windows(self._tokenize(text), self.size, self.overlap)


@register("chunker.sentence")
class SentenceChunker(_Chunker):
    """Whole sentences packed into chunks of at most `max_tokens` tokens."""

    max_tokens: int = param(200, ge=1, help="tokens per chunk; a longer sentence is split by tokens")
    overlap_sentences: int = param(0, ge=0, help="trailing sentences of a chunk repeated at the start of the next")
    tokenizer: str = param("whitespace", help=_TOKENIZER_HELP)

    def _setup(self) -> None:
        self._load_tokenizer(self.tokenizer)

    def _spans(self, text: str) -> Spans:
        sents = split_sentences(text)
        if not sents:
            return []
        tokens = self._tokenize(text)
        starts = [s for s, _ in tokens]
        # tokens of sentence k: indices [lo[k], lo[k + 1]) (by token start)
        lo = [bisect_left(starts, s) for s, _ in sents] + [len(tokens)]
        counts = [lo[k + 1] - lo[k] for k in range(len(sents))]
        out: Spans = []
        cur: list[int] = []
        total = 0

        def flush() -> None:
            if cur:
                out.append((sents[cur[0]][0], sents[cur[-1]][1]))

        for k in range(len(sents)):
            if counts[k] > self.max_tokens:
                flush()
                cur, total = [], 0
                out.extend(self._split_long(sents[k], tokens[lo[k]:lo[k + 1]]))
                continue
            if cur and total + counts[k] > self.max_tokens:
                flush()
                keep = cur[len(cur) - self.overlap_sentences:] if self.overlap_sentences else []
                while keep and sum(counts[x] for x in keep) + counts[k] > self.max_tokens:
                    keep.pop(0)
                cur, total = keep, sum(counts[x] for x in keep)
            cur.append(k)
            total += counts[k]
        flush()
        return out

    def _split_long(self, sent: tuple[int, int], tokens: Spans) -> Spans:
        """A sentence over max_tokens: token windows, clipped to the sentence, first/last to its ends."""
        s0, e0 = sent
        wins = token_windows(tokens, self.max_tokens, 0)
        out = []
        for w, (s, e) in enumerate(wins):
            s = s0 if w == 0 else max(s, s0)
            e = e0 if w == len(wins) - 1 else min(e, e0)
            if e > s:
                out.append((s, e))
        return out


@register("chunker.recursive")
class RecursiveChunker(_Chunker):
    """LangChain's recursive character splitting (paragraphs, lines, sentences, words, characters)."""

    chunk_size: int = param(1000, ge=1, help="characters per chunk")
    chunk_overlap: int = param(200, ge=0, help="characters of trailing pieces repeated in the next chunk (< chunk_size)")
    separators: list[str] = param(list(DEFAULT_SEPARATORS),
                                  help="tried in order; the first found splits the text; '' = characters")
    keep_separator: Literal["start", "end"] = param("start", help="a separator begins the next piece (LangChain's "
                                                    "default) or ends the previous one ('end' suits '. ')")

    def validate(self) -> None:
        if self.chunk_overlap >= self.chunk_size:
            raise ConfigError(f"'{self.key}': parameter 'chunk_overlap' ({self.chunk_overlap}) must be smaller "
                              f"than 'chunk_size' ({self.chunk_size}).")
        if not self.separators:
            raise ConfigError(f"'{self.key}': parameter 'separators' is empty; give at least one, e.g. ['\\n\\n', "
                              f"'\\n', ' ', ''].")

    def _spans(self, text: str) -> Spans:
        return recursive_split(text, self.chunk_size, self.chunk_overlap, self.separators, self.keep_separator)
