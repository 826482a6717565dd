"""A small synchronous grammar that writes an English sentence, its French-like translation and the
word alignment between them, all three at once.

Each rule builds a ``Phrase``: English tokens, French tokens and the links ``(i, j)`` meaning English
token ``i`` translates into French token ``j``. Rules nest (a noun phrase holds a prepositional
phrase whose noun phrase holds a relative clause...), and three of them reorder words:

- adjectives follow their noun in French: ``the big red cat`` → ``le chat grand rouge``;
- frequency adverbs follow the verb: ``often sees`` → ``voit souvent``;
- the possessive swaps the two nouns: ``the king 's old horse`` → ``le cheval vieux de le roi``;

and negation is a two-to-two crossing: ``does not see`` → ``ne voit pas``. Determiners, adjectives
and verbs agree in gender and number with their noun.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from course_lib.data import lexicon as lx

MAX_DEPTH = 2  # how deep noun phrases nest inside noun phrases


@dataclass(frozen=True)
class Phrase:
    en: tuple[str, ...]
    fr: tuple[str, ...]
    links: tuple[tuple[int, int], ...]


@lru_cache(maxsize=None)
def word(en: tuple[str, ...] | str, fr: tuple[str, ...] | str) -> Phrase:
    """A lexical unit: every English token linked to every French token (one to one, or n to m)."""
    en = (en,) if isinstance(en, str) else tuple(en)
    fr = (fr,) if isinstance(fr, str) else tuple(fr)
    return Phrase(en, fr, tuple((i, j) for i in range(len(en)) for j in range(len(fr))))


def join(parts: list[Phrase], french_order: list[int] | None = None) -> Phrase:
    """Concatenate ``parts`` in order on the English side and in ``french_order`` on the French side."""
    order = range(len(parts)) if french_order is None else french_order
    en: list[str] = []
    en_start = []
    for part in parts:
        en_start.append(len(en))
        en.extend(part.en)
    fr: list[str] = []
    fr_start = [0] * len(parts)
    for index in order:
        fr_start[index] = len(fr)
        fr.extend(parts[index].fr)
    links: list[tuple[int, int]] = []
    for part, a, b in zip(parts, en_start, fr_start):
        links.extend([(i + a, j + b) for i, j in part.links])
    return Phrase(tuple(en), tuple(fr), tuple(links))


@dataclass(frozen=True)
class NounPhrase:
    phrase: Phrase
    plural: bool


class Grammar:
    """Draws phrases from ``rng``; ``richness`` in [0, 1] makes optional parts more likely."""

    def __init__(self, rng: random.Random, richness: float) -> None:
        self.rng = rng
        self.richness = richness

    def _maybe(self, base: float) -> bool:
        return self.rng.random() < base * (0.4 + 1.2 * self.richness)

    def determiner(self, gender: str, plural: bool) -> Phrase:
        options = [d for d in lx.DETERMINERS if (d[1] if plural else d[0]) is not None]
        en_sg, en_pl, fr_m, fr_f, fr_pl = self.rng.choice(options)
        fr = fr_pl if plural else (fr_m if gender == lx.MASC else fr_f)
        return word(en_pl if plural else en_sg, fr)

    def adjectives(self, gender: str, plural: bool) -> list[Phrase]:
        count = 0
        while count < 3 and self._maybe(0.35):
            count += 1
        chosen = self.rng.sample(lx.ADJECTIVES, count)
        column = (3 if plural else 1) + (1 if gender == lx.FEM else 0)
        return [word(adjective[0], adjective[column]) for adjective in chosen]

    def noun_core(self) -> tuple[Phrase, Phrase, list[Phrase], str, bool]:
        """(determiner, noun, adjectives, gender, plural) of a plain noun phrase."""
        en_sg, en_pl, fr_sg, fr_pl, gender = self.rng.choice(lx.NOUNS)
        plural = self.rng.random() < 0.35
        noun = word(en_pl if plural else en_sg, fr_pl if plural else fr_sg)
        return self.determiner(gender, plural), noun, self.adjectives(gender, plural), gender, plural

    def noun_phrase(self, depth: int = 0) -> NounPhrase:
        det, noun, adjectives, gender, plural = self.noun_core()
        n = len(adjectives)
        if depth < MAX_DEPTH and self._maybe(0.12):
            # the king 's old horse -> le cheval vieux de le roi
            owner = self.plain_noun_phrase()
            of = word("'s", "de")
            # English: owner 's adjectives noun; French: article noun adjectives de owner. The article
            # has no English token of its own: it is linked to "'s", which says the noun is definite.
            article = Phrase((), ("les" if plural else ("le" if gender == lx.MASC else "la"),), ())
            parts = [owner, of, *adjectives, noun, article]
            head = join(parts, [3 + n, 2 + n, *range(2, 2 + n), 1, 0])
            phrase = Phrase(head.en, head.fr, head.links + ((len(owner.en), 0),))
        else:
            parts = [det, *adjectives, noun]
            phrase = join(parts, [0, n + 1, *range(1, n + 1)])
        if depth < MAX_DEPTH and self._maybe(0.22):
            phrase = join([phrase, self.prepositional_phrase(depth + 1)])
        if depth < MAX_DEPTH and self._maybe(0.18):
            phrase = join([phrase, self.relative_clause(plural, depth + 1)])
        return NounPhrase(phrase, plural)

    def plain_noun_phrase(self) -> Phrase:
        det, noun, adjectives, _, _ = self.noun_core()
        n = len(adjectives)
        return join([det, *adjectives, noun], [0, n + 1, *range(1, n + 1)])

    def prepositional_phrase(self, depth: int) -> Phrase:
        en, fr = self.rng.choice(lx.PREPOSITIONS)
        return join([word(en, fr), self.noun_phrase(depth).phrase])

    def relative_clause(self, plural_head: bool, depth: int) -> Phrase:
        if self.rng.random() < 0.6:  # the cat that sees the dog -> le chat qui voit le chien
            return join([word("that", "qui"), self.verb_phrase(plural_head, depth)])
        # the cat that the dog sees -> le chat que le chien voit
        subject = self.noun_phrase(MAX_DEPTH)
        verb = self.verb(lx.TRANSITIVE_VERBS, subject.plural, negated=False)
        return join([word("that", "que"), subject.phrase, verb])

    def verb(self, table, plural: bool, negated: bool) -> Phrase:
        en_3sg, en_base, fr_sg, fr_pl = self.rng.choice(table)
        fr = fr_pl if plural else fr_sg
        if negated:
            # does not see -> ne voit pas: does~voit, not~ne, not~pas, see~voit
            auxiliary = "do" if plural else "does"
            return Phrase((auxiliary, "not", en_base), ("ne", fr, "pas"),
                          ((0, 1), (1, 0), (1, 2), (2, 1)))
        return word(en_base if plural else en_3sg, fr)

    def verb_phrase(self, plural: bool, depth: int) -> Phrase:
        transitive = self.rng.random() < 0.6
        negated = self.rng.random() < 0.15
        verb = self.verb(lx.TRANSITIVE_VERBS if transitive else lx.INTRANSITIVE_VERBS, plural, negated)
        if not negated and self._maybe(0.2):  # often sees -> voit souvent
            adverb = word(*self.rng.choice(lx.FREQUENCY_ADVERBS))
            phrase = join([adverb, verb], [1, 0])
        else:
            phrase = verb
        if transitive:
            phrase = join([phrase, self.noun_phrase(depth).phrase])
        if self._maybe(0.15):
            phrase = join([phrase, word(*self.rng.choice(lx.MANNER_ADVERBS))])
        if depth < MAX_DEPTH and self._maybe(0.15):
            phrase = join([phrase, self.prepositional_phrase(depth + 1)])
        return phrase

    def clause(self) -> Phrase:
        subject = self.noun_phrase()
        return join([subject.phrase, self.verb_phrase(subject.plural, 0)])

    def conjunction(self) -> Phrase:
        return word(*self.rng.choice(lx.CONJUNCTIONS))


_SHORTEST_CLAUSE = 3  # "the cat sleeps"
_LONGEST_LAST_CLAUSE = 16


class SentenceWriter:
    """Writes sentences of exact lengths, from one stream of clauses drawn from ``rng``.

    Every clause the grammar writes is kept, by length, until a sentence uses it: a sentence is
    clauses joined by conjunctions, the last one chosen to fill exactly the tokens left. Each clause
    serves at most one sentence.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.unused: dict[int, list[Phrase]] = {}

    def _draw(self, richness: float) -> None:
        clause = Grammar(self.rng, richness).clause()
        self.unused.setdefault(len(clause.en), []).append(clause)

    def _take(self, length: int) -> Phrase:
        # short clauses come from plain grammars: draw with a richness that grows with the length wanted
        most = min(1.0, length / 16)
        while not self.unused.get(length):
            self._draw(most * self.rng.random())
        return self.unused[length].pop()

    def _take_any(self, longest: int) -> Phrase:
        """An unused clause of ``_SHORTEST_CLAUSE`` to ``longest`` tokens, lengths weighted by stock."""
        lengths = [k for k in range(_SHORTEST_CLAUSE, longest + 1) if self.unused.get(k)]
        if not lengths:
            return self._take(self.rng.randint(_SHORTEST_CLAUSE, longest))
        length = self.rng.choices(lengths, weights=[len(self.unused[k]) for k in lengths])[0]
        return self.unused[length].pop()

    def sentence(self, length: int) -> Phrase:
        """A sentence of exactly ``length`` English tokens, the final "." included."""
        if length < _SHORTEST_CLAUSE + 1:
            raise ValueError(f"the shortest sentence has {_SHORTEST_CLAUSE + 1} tokens, asked for {length}")
        parts: list[Phrase] = []
        left = length - 1  # the final "."
        while left > 0:
            conjunction = Grammar(self.rng, 0.0).conjunction()
            room = left - len(conjunction.en) - _SHORTEST_CLAUSE  # what a clause may take if one follows
            if room < _SHORTEST_CLAUSE or (left <= _LONGEST_LAST_CLAUSE and self.rng.random() < 0.5):
                parts.append(self._take(left))
                left = 0
            else:
                clause = self._take_any(room)
                parts.append(join([clause, conjunction]))
                left -= len(clause.en) + len(conjunction.en)
        return join([*parts, word(".", ".")])
