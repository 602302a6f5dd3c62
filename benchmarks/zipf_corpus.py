"""A synthetic passage corpus whose vocabulary grows like real text (Zipf's and Heaps' laws).

Repeating a few thousand real passages to reach 1M (what the BM25 benchmark did before) freezes
the vocabulary and makes every posting list a multiple of the same pattern. This generator is
fitted to real passages instead and keeps producing new words at the rate real text does:

- **Zipf, two regimes** (as measured on the 3,881 Cranfield + CISI + SQuAD passages of
  ``../shared/data``, 531,564 word tokens): the ``HEAD`` = 1,000 most frequent words are drawn with
  their real relative frequencies (rank-frequency slope about -1; "the" is 7.9% of tokens); the
  other tokens follow a power law in rank, p(r) ~ r^-a for r > HEAD, with ``a`` fitted on ranks
  1,000-10,000 of the real text (slope about -1.55). A tail rank is drawn by inverse transform of
  the continuous Pareto law, so the vocabulary is unbounded.
- **Heaps**: with a tail exponent a, the number of distinct words after n tokens grows like
  n^(1/a) (about n^0.64 for a = 1.55; the real passages give a Heaps exponent of 0.61 up to 531k
  tokens). Measured on the output, see ``heaps_table``.
- **Words**: ranks inside the real vocabulary are real words (so stopword lists and the Porter
  stemmer behave as on real text); ranks beyond it are pronounceable pseudo-words spelled from the
  rank in base 70 (consonant-vowel syllables), one distinct word per rank.
- **Lengths**: passage lengths (word tokens) are drawn from the real passages' lengths.

Deterministic for a given ``seed``. ``python benchmarks/zipf_corpus.py`` prints the fitted
parameters and the Heaps check (distinct words at 10k / 100k / 1M passages, against the repeated
corpus).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEAD = 1000
CONS, VOWELS = "bdfgklmnprstvz", "aeiou"
SYLL = [c + v for c in CONS for v in VOWELS]   # 70 syllables
WORD = re.compile(r"\w+")


@dataclass
class ZipfModel:
    words: list[str]           # the real vocabulary by decreasing frequency
    head_cdf: np.ndarray       # cumulative probabilities of the HEAD most frequent words
    head_mass: float           # share of tokens that are HEAD words
    tail_exponent: float       # a in p(r) ~ r^-a for r > HEAD
    lengths: np.ndarray        # real passage lengths in word tokens


def fit(texts: list[str]) -> ZipfModel:
    from collections import Counter

    counts = Counter(w for t in texts for w in WORD.findall(t.lower()))
    ranked = counts.most_common()
    words = [w for w, _ in ranked]
    f = np.array([c for _, c in ranked], dtype=float)
    head = f[:HEAD]
    r = np.arange(1, len(f) + 1)
    hi = min(len(f), 10 * HEAD)
    slope = np.polyfit(np.log(r[HEAD - 1:hi]), np.log(f[HEAD - 1:hi]), 1)[0]
    lengths = np.array([max(1, len(WORD.findall(t))) for t in texts])
    return ZipfModel(words, np.cumsum(head) / head.sum(), float(head.sum() / f.sum()), float(-slope), lengths)


def pseudo_word(rank: int) -> str:
    out = []
    r = int(rank)
    while True:
        r, d = divmod(r, len(SYLL))
        out.append(SYLL[d])
        if r == 0:
            break
    return "".join(out) + "x" if len(out) < 2 else "".join(out)


def sample_ranks(model: ZipfModel, n_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """0-based word ranks of ``n_tokens`` tokens."""
    is_head = rng.random(n_tokens) < model.head_mass
    out = np.empty(n_tokens, dtype=np.int64)
    nh = int(is_head.sum())
    out[is_head] = np.searchsorted(model.head_cdf, rng.random(nh), side="right")
    u = rng.random(n_tokens - nh)
    # continuous Pareto on [HEAD, inf) with density ~ r^-a: r = HEAD * (1 - u)^(-1 / (a - 1))
    tail = HEAD * np.power(1.0 - u, -1.0 / (model.tail_exponent - 1.0))
    out[~is_head] = np.minimum(tail, 2**62).astype(np.int64)
    return out


def generate(model: ZipfModel, n: int, seed: int = 0, chunk: int = 20_000):
    """Yield ``n`` passages (strings)."""
    rng = np.random.default_rng(seed)
    real = np.array(model.words, dtype=object)
    cache: dict[int, str] = {}
    done = 0
    while done < n:
        m = min(chunk, n - done)
        lens = rng.choice(model.lengths, size=m)
        ranks = sample_ranks(model, int(lens.sum()), rng)
        uniq, inv = np.unique(ranks, return_inverse=True)
        names = np.empty(len(uniq), dtype=object)
        inside = uniq < len(real)
        names[inside] = real[uniq[inside]]
        for i in np.flatnonzero(~inside):
            r = int(uniq[i])
            w = cache.get(r)
            if w is None:
                w = cache[r] = pseudo_word(r)
            names[i] = w
        toks = names[inv]
        ends = np.cumsum(lens)
        starts = ends - lens
        for s, e in zip(starts, ends):
            yield " ".join(toks[s:e])
        done += m


def cached_corpus(model: ZipfModel, n: int, seed: int, folder: Path) -> list[str]:
    """The corpus of ``n`` passages, generated once and kept as a text file (one passage a line)."""
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / f"zipf-{n}-{seed}-a{model.tail_exponent:.4f}.txt"
    if not f.exists():
        tmp = f.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for p in generate(model, n, seed):
                fh.write(p + "\n")
        tmp.replace(f)
    with open(f, encoding="utf-8") as fh:
        return fh.read().splitlines()


def heaps_table(texts_iter, marks: list[int]) -> list[tuple[int, int, int]]:
    """(passages, tokens, distinct words) at each mark."""
    seen: set[str] = set()
    out, ntok = [], 0
    for i, t in enumerate(texts_iter, 1):
        ws = WORD.findall(t.lower())
        ntok += len(ws)
        seen.update(ws)
        if i in marks:
            out.append((i, ntok, len(seen)))
        if i >= marks[-1]:
            break
    return out


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_bm25 import base_passages

    texts, _ = base_passages()
    m = fit(texts)
    print(f"fitted on {len(texts)} passages: real vocabulary {len(m.words):,}, head mass {m.head_mass:.3f}, "
          f"tail exponent {m.tail_exponent:.3f} (Heaps exponent about {1 / m.tail_exponent:.3f}), "
          f"mean length {m.lengths.mean():.1f}")
    marks = [1_000, 10_000, 100_000, 1_000_000]
    for label, it in (("zipf", generate(m, marks[-1])), ("repeated", (texts[i % len(texts)] for i in range(marks[-1])))):
        for n, ntok, v in heaps_table(it, marks):
            print(f"{label:9s} passages {n:>9,}  tokens {ntok:>12,}  distinct words {v:>10,}")
