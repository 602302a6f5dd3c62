"""Word tokenizer shared by the lexical stages (BM25 and anything else that needs terms).

One configuration, :class:`TokenizerConfig`, turns text into terms in four steps, the same
steps as ``bm25s.tokenize`` (and scikit-learn's ``CountVectorizer``):

1. lowercase (``lowercase``),
2. split with a regular expression (``token_pattern``; default ``(?u)\\b\\w\\w+\\b``: words of
   two or more word characters),
3. drop stopwords (``stopwords``: ``en_plus`` = NLTK's 179-word English list as shipped with
   bm25s, ``en`` = bm25s' short 33-word list, ``none``), matched before stemming,
4. stem (``stemmer``: ``porter`` = Porter's 1980 algorithm, ``english`` = Snowball English
   ("Porter2"), both from PyStemmer, or ``none``).

:class:`Tokenizer` encodes a whole corpus straight to integer term ids (stemming each distinct
word once), and encodes queries against a fixed vocabulary, dropping unknown terms. A
tokenizer is safe to share between threads (each thread gets its own stemmer).
"""
from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Literal, Mapping

StopwordsName = Literal["en", "en_plus", "none"]
StemmerName = Literal["porter", "english", "none"]
STOPWORD_CHOICES: tuple[str, ...] = ("en", "en_plus", "none")
STEMMER_CHOICES: tuple[str, ...] = ("porter", "english", "none")
DEFAULT_PATTERN = r"(?u)\b\w\w+\b"


def stopword_list(name: str) -> frozenset[str]:
    """The stopword set called ``name`` (see module docstring)."""
    if name == "none":
        return frozenset()
    from bm25s.stopwords import STOPWORDS_EN, STOPWORDS_EN_PLUS

    if name == "en":
        return frozenset(STOPWORDS_EN)
    if name == "en_plus":
        return frozenset(STOPWORDS_EN_PLUS)
    raise ValueError(f"unknown stopword list {name!r}; valid: {', '.join(STOPWORD_CHOICES)}")


@dataclass(frozen=True)
class TokenizerConfig:
    """How text becomes terms; stored in every lexical index's params and checked on load."""

    lowercase: bool = True
    stopwords: str = "en_plus"
    stemmer: str = "porter"
    token_pattern: str = DEFAULT_PATTERN

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TokenizerConfig":
        return cls(**{k: d[k] for k in ("lowercase", "stopwords", "stemmer", "token_pattern") if k in d})


class Tokenizer:
    """Text -> terms / term ids for one :class:`TokenizerConfig`."""

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        self.config = config or TokenizerConfig()
        if self.config.stemmer not in STEMMER_CHOICES:
            raise ValueError(f"unknown stemmer {self.config.stemmer!r}; valid: {', '.join(STEMMER_CHOICES)}")
        self._split = re.compile(self.config.token_pattern).findall
        self._stop = stopword_list(self.config.stopwords)
        self._local = threading.local()
        self._stem_cache: dict[str, str] = {}

    # -- stemming ------------------------------------------------------------------------------
    def _stemmer(self) -> Any:
        st = getattr(self._local, "stemmer", None)
        if st is None:
            import Stemmer  # PyStemmer

            st = self._local.stemmer = Stemmer.Stemmer(self.config.stemmer)
        return st

    def stem_words(self, words: list[str]) -> list[str]:
        if self.config.stemmer == "none" or not words:
            return list(words)
        return self._stemmer().stemWords(words)

    # -- text -> terms ---------------------------------------------------------------------------
    def words(self, text: str) -> list[str]:
        """Steps 1-3: lowercase, split, drop stopwords (no stemming)."""
        if self.config.lowercase:
            text = text.lower()
        stop = self._stop
        toks = self._split(text)
        return [t for t in toks if t not in stop] if stop else toks

    def terms(self, text: str) -> list[str]:
        """All four steps: the terms of one text, in order, repeats kept."""
        words = self.words(text)
        if self.config.stemmer == "none":
            return words
        cache = self._stem_cache
        if len(cache) > 1_000_000:  # bound the memory a long-running retriever spends on it
            cache.clear()
        got = {w: cache.get(w) for w in set(words)}  # local: safe while other threads clear
        missing = [w for w, s in got.items() if s is None]
        if missing:
            for w, s in zip(missing, self.stem_words(missing)):
                got[w] = cache[w] = s
        return [got[w] for w in words]

    def encode_corpus(self, texts: Iterable[str], progress: Any = None) -> tuple[list[list[int]], list[str]]:
        """Encode every text to term ids. Returns ``(ids per text, vocabulary)``; term ``i`` is
        ``vocab[i]``. Distinct words are stemmed once, at the end."""
        word_ids: dict[str, int] = {}
        docs: list[list[int]] = []
        split, stop, lower = self._split, self._stop, self.config.lowercase
        setdefault = word_ids.setdefault
        for text in texts:
            toks = split(text.lower() if lower else text)
            if stop:
                docs.append([setdefault(t, len(word_ids)) for t in toks if t not in stop])
            else:
                docs.append([setdefault(t, len(word_ids)) for t in toks])
            if progress is not None:
                progress.update(1)
        words = list(word_ids)
        stems = self.stem_words(words)
        if stems == words:
            return docs, words
        stem_ids: dict[str, int] = {}
        remap = [stem_ids.setdefault(s, len(stem_ids)) for s in stems]
        for j, d in enumerate(docs):  # in place: never two copies of the corpus at once
            docs[j] = [remap[i] for i in d]
        return docs, list(stem_ids)

    def encode_query(self, text: str, vocab: Mapping[str, int]) -> list[int]:
        """Term ids of a query against ``vocab``; terms not in the vocabulary are dropped."""
        get = vocab.get
        return [i for i in map(get, self.terms(text)) if i is not None]
