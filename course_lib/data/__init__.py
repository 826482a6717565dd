"""The course's parallel corpus: English → a French-like language, generated here, with alignments.

Every lesson from 01 to 06 trains and tests on it. It is written by a small synchronous grammar
(``course_lib.data.grammar``), deterministically: the same seed gives the same corpus on every machine,
and nothing is downloaded. What it has, for the length experiments:

- sentences of 5 to 50 tokens (the final "." counts as a token), with nesting (relative clauses,
  prepositional phrases, possessives) and French-like reordering and agreement;
- a training set with the same number of sentences at every source length from 5 to 50, so that a
  model that fails on long sentences fails for want of capacity, not for want of examples;
- a test set in five buckets of source length (5–10, 11–20, 21–30, 31–40, 41–50), at least 300
  sentences each, none of them in the training set;
- the true word alignment of every pair, as ``(source index, target index)`` links, against which
  lesson 03 scores learned attention (alignment error rate).

>>> corpus = load_corpus()
>>> print(corpus.test[0])            # the pair with its alignment drawn as a grid
>>> for batch in batches(corpus.train[:128], corpus.src_vocab, corpus.tgt_vocab, batch_size=64): ...
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch

from course_lib.data.grammar import SentenceWriter

__all__ = [
    "PAD", "SOS", "EOS", "UNK", "SPECIALS", "BUCKETS",
    "Pair", "Vocab", "Corpus", "Batch",
    "load_corpus", "batches", "bucket_of", "corpus_fingerprint",
]

PAD, SOS, EOS, UNK = "<pad>", "<sos>", "<eos>", "<unk>"
SPECIALS = (PAD, SOS, EOS, UNK)  # ids 0, 1, 2, 3 in both vocabularies

# Test buckets of source length (tokens), inclusive bounds, named as the lessons' figures label them.
BUCKETS: dict[str, tuple[int, int]] = {
    "5-10": (5, 10), "11-20": (11, 20), "21-30": (21, 30), "31-40": (31, 40), "41-50": (41, 50),
}
SHORTEST, LONGEST = 5, 50

# Sizes: sentences per source length. The full corpus is what the shipped checkpoints were trained on;
# "tiny" is for tests and for a first look.
SIZES: dict[str, dict[str, int]] = {
    "full": {"train": 400, "valid": 8, "test": 40},
    "tiny": {"train": 12, "valid": 2, "test": 4},
}
# 5-10 has six lengths where the other buckets have ten: it gets more sentences per length.
_SHORT_BUCKET_FACTOR = 1.7


@dataclass(frozen=True)
class Pair:
    """A source sentence, its translation and the links ``(i, j)``: source token i ↔ target token j."""

    src: tuple[str, ...]
    tgt: tuple[str, ...]
    alignment: tuple[tuple[int, int], ...]

    def alignment_matrix(self) -> torch.Tensor:
        """A ``(len(tgt), len(src))`` 0/1 float matrix laid out as attention maps are (targets down)."""
        matrix = torch.zeros(len(self.tgt), len(self.src))
        for i, j in self.alignment:
            matrix[j, i] = 1.0
        return matrix

    def __str__(self) -> str:
        """Both sentences and the alignment as a grid: a ``#`` where target word (row) ↔ source word."""
        width = max(len(t) for t in self.tgt)
        lines = ["EN: " + " ".join(self.src), "FR: " + " ".join(self.tgt), ""]
        # column headers: source token indices, then the tokens themselves below the grid
        lines.append(" " * (width + 1) + " ".join(f"{i % 100:>2}" for i in range(len(self.src))))
        links = set(self.alignment)
        for j, token in enumerate(self.tgt):
            cells = " ".join(" #" if (i, j) in links else " ." for i in range(len(self.src)))
            lines.append(f"{token:>{width}} {cells}")
        lines.append("")
        lines.extend(f"{i:>{width + 3}}: {token}" for i, token in enumerate(self.src))
        return "\n".join(lines)


class Vocab:
    """Token ↔ id, with ``<pad> <sos> <eos> <unk>`` as ids 0–3; unknown tokens map to ``<unk>``."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.itos: list[str] = list(SPECIALS) + sorted(set(tokens) - set(SPECIALS))
        self.stoi: dict[str, int] = {token: index for index, token in enumerate(self.itos)}
        self.pad, self.sos, self.eos, self.unk = (self.stoi[s] for s in SPECIALS)

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens: {' '.join(self.itos[:8])} ...)"

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(token, self.unk) for token in tokens]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """Tokens up to the first ``<eos>`` (excluded), leaving out ``<pad>`` and ``<sos>``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        tokens = []
        for index in ids:
            if index == self.eos:
                break
            if index not in (self.pad, self.sos):
                tokens.append(self.itos[index])
        return tokens


class Corpus:
    """The splits ``train``, ``valid``, ``test`` (tuples of ``Pair``) and the two vocabularies.

    Splits are generated when first read (the training set takes several seconds; a lesson that only
    evaluates never pays for it). The test set comes first, then the validation set, then the training
    set, each skipping source sentences an earlier one holds.
    """

    def __init__(self, size: str, seed: int) -> None:
        self.size, self.seed = size, seed
        self.src_vocab, self.tgt_vocab = _vocabularies()
        self._taken: set[tuple[str, ...]] = set()

    @cached_property
    def test(self) -> tuple[Pair, ...]:
        return self._generate("test")

    @cached_property
    def valid(self) -> tuple[Pair, ...]:
        self.test
        return self._generate("valid")

    @cached_property
    def train(self) -> tuple[Pair, ...]:
        self.valid
        return self._generate("train")

    def _generate(self, split: str) -> tuple[Pair, ...]:
        writer = SentenceWriter(random.Random(f"course-corpus/{self.seed}/{split}"))
        pairs = []
        for length in range(SHORTEST, LONGEST + 1):
            found = 0
            while found < _per_length(self.size, split, length):
                phrase = writer.sentence(length)
                if phrase.en not in self._taken:
                    self._taken.add(phrase.en)
                    pairs.append(Pair(phrase.en, phrase.fr, tuple(sorted(phrase.links))))
                    found += 1
        return tuple(pairs)

    def test_buckets(self) -> dict[str, tuple[Pair, ...]]:
        """The test set split by source length into ``BUCKETS``' five buckets."""
        return {name: tuple(p for p in self.test if lo <= len(p.src) <= hi) for name, (lo, hi) in BUCKETS.items()}

    def __repr__(self) -> str:
        counts = ", ".join(f"{split} {len(getattr(self, split))}" if split in self.__dict__ else f"{split} (not generated yet)"
                           for split in ("train", "valid", "test"))
        return (f"Corpus(size={self.size!r}, seed={self.seed}: {counts} pairs; "
                f"{len(self.src_vocab)} source and {len(self.tgt_vocab)} target tokens)")


def bucket_of(length: int) -> str:
    """The name of the bucket a source length falls in (``"5-10"`` ... ``"41-50"``)."""
    for name, (lo, hi) in BUCKETS.items():
        if lo <= length <= hi:
            return name
    raise ValueError(f"source length {length} lies outside the buckets {SHORTEST}-{LONGEST}")


def _per_length(size: str, split: str, length: int) -> int:
    count = SIZES[size][split]
    if split != "train" and length <= BUCKETS["5-10"][1]:
        count = round(count * _SHORT_BUCKET_FACTOR)
    return count


def load_corpus(size: str = "full", seed: int = 0) -> Corpus:
    """The corpus (cached): ``"full"`` (what the shipped checkpoints used) or ``"tiny"`` (for tests)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    return _load(size, seed)


@lru_cache(maxsize=4)
def _load(size: str, seed: int) -> Corpus:
    return Corpus(size, seed)


@lru_cache(maxsize=1)
def _vocabularies() -> tuple[Vocab, Vocab]:
    """Every word the grammar can write, on each side: the vocabularies do not depend on the sample."""
    from course_lib.data import lexicon as lx

    en: set[str] = {".", "'s", "that", "not", "do", "does"}
    fr: set[str] = {".", "de", "qui", "que", "ne", "pas", "le", "la", "les"}
    for en_sg, en_pl, fr_sg, fr_pl, _ in lx.NOUNS:
        en |= {en_sg, en_pl}
        fr |= {fr_sg, fr_pl}
    for adjective in lx.ADJECTIVES:
        en.add(adjective[0])
        fr |= set(adjective[1:])
    for table in (lx.TRANSITIVE_VERBS, lx.INTRANSITIVE_VERBS):
        for forms in table:
            en |= set(forms[:2])
            fr |= set(forms[2:])
    for e, f in lx.FREQUENCY_ADVERBS + lx.MANNER_ADVERBS:
        en.add(e)
        fr.add(f)
    for e, f in lx.PREPOSITIONS + lx.CONJUNCTIONS:
        en |= set(e)
        fr |= set(f)
    for determiner in lx.DETERMINERS:
        en |= {d for d in determiner[:2] if d}
        fr |= {d for d in determiner[2:] if d}
    return Vocab(sorted(en)), Vocab(sorted(fr))


def corpus_fingerprint(size: str = "full", seed: int = 0) -> str:
    """SHA-256 (hex, first 16 digits) of the corpus's pairs, alignments and vocabularies.

    Checkpoints store it; a test fails when the corpus changes under them.
    """
    corpus = load_corpus(size, seed)
    digest = hashlib.sha256()
    for vocab in (corpus.src_vocab, corpus.tgt_vocab):
        digest.update("\x1f".join(vocab.itos).encode())
        digest.update(b"\x1e")
    for split in (corpus.train, corpus.valid, corpus.test):
        for pair in split:
            digest.update(" ".join(pair.src).encode() + b"\t" + " ".join(pair.tgt).encode() + b"\t")
            digest.update(",".join(f"{i}-{j}" for i, j in pair.alignment).encode() + b"\n")
        digest.update(b"\x1e")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Batch:
    """Padded id tensors, batch first.

    ``src (B, S)`` and ``src_lengths (B,)``; ``tgt_in (B, T)`` = ``<sos>`` + target (the decoder's
    input under teacher forcing) and ``tgt_out (B, T)`` = target + ``<eos>`` (what it must predict),
    with ``tgt_lengths (B,)`` counting the ``<eos>``; padding is ``<pad>`` = 0. ``pairs`` are the
    batch's pairs, in the batch's order.
    """

    src: torch.Tensor
    src_lengths: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    tgt_lengths: torch.Tensor
    pairs: tuple[Pair, ...]


def _pad(rows: list[list[int]], pad: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [pad] * (width - len(row)) for row in rows], dtype=torch.long)


def make_batch(pairs: Sequence[Pair], src_vocab: Vocab, tgt_vocab: Vocab) -> Batch:
    src = [src_vocab.encode(p.src) for p in pairs]
    tgt = [tgt_vocab.encode(p.tgt) for p in pairs]
    return Batch(
        src=_pad(src, src_vocab.pad),
        src_lengths=torch.tensor([len(s) for s in src]),
        tgt_in=_pad([[tgt_vocab.sos] + t for t in tgt], tgt_vocab.pad),
        tgt_out=_pad([t + [tgt_vocab.eos] for t in tgt], tgt_vocab.pad),
        tgt_lengths=torch.tensor([len(t) + 1 for t in tgt]),
        pairs=tuple(pairs),
    )


def batches(
    pairs: Sequence[Pair],
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    same_length: bool = True,
) -> Iterator[Batch]:
    """Padded batches of ``pairs``.

    With ``same_length`` (the default) each batch holds sources of a single length, so that the
    encoder needs no padding and a recurrent encoder's last state is each sentence's own; batches
    are then drawn length by length (in a seeded random order with ``shuffle``). Without it, pairs go
    in their given (or shuffled) order and sources are padded.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    order = list(range(len(pairs)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    if same_length:
        groups: dict[int, list[int]] = {}
        for index in order:
            groups.setdefault(len(pairs[index].src), []).append(index)
        chunks = [group[k : k + batch_size] for _, group in sorted(groups.items()) for k in range(0, len(group), batch_size)]
        if shuffle:
            rng.shuffle(chunks)
    else:
        chunks = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    for chunk in chunks:
        yield make_batch([pairs[i] for i in chunk], src_vocab, tgt_vocab)
