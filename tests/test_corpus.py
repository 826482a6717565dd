"""The course's parallel corpus (course_lib.data): determinism, the length design, alignments,
agreement, vocabularies and batches."""

from collections import Counter

import pytest
import torch

from course_lib.data import (
    BUCKETS, EOS, PAD, SOS, UNK, Corpus, Pair, Vocab, batches, bucket_of, corpus_fingerprint, load_corpus,
)
from course_lib.data import lexicon as lx


@pytest.fixture(scope="module")
def tiny():
    return load_corpus("tiny")


@pytest.fixture(scope="module")
def full_test():
    return load_corpus("full").test


def test_the_corpus_is_the_same_each_time_it_is_generated(tiny):
    again = Corpus("tiny", 0)  # a fresh object, not the cached one
    assert again.test == tiny.test and again.train == tiny.train and again.valid == tiny.valid
    other_seed = Corpus("tiny", 1)
    assert other_seed.test != tiny.test


def test_training_has_equal_numbers_at_every_length_from_5_to_50(tiny):
    counts = Counter(len(p.src) for p in tiny.train)
    assert sorted(counts) == list(range(5, 51))
    assert len(set(counts.values())) == 1


def test_the_full_test_set_has_at_least_300_sentences_per_bucket(full_test):
    per_bucket = Counter(bucket_of(len(p.src)) for p in full_test)
    assert set(per_bucket) == set(BUCKETS)
    assert min(per_bucket.values()) >= 300, per_bucket


def test_splits_share_no_source_sentence(tiny):
    train = {p.src for p in tiny.train}
    assert not train & {p.src for p in tiny.test}
    assert not train & {p.src for p in tiny.valid}
    assert not {p.src for p in tiny.valid} & {p.src for p in tiny.test}
    assert len(train) == len(tiny.train)


def test_test_buckets_split_the_test_set_by_source_length(tiny):
    buckets = tiny.test_buckets()
    assert list(buckets) == list(BUCKETS)
    assert sum(len(b) for b in buckets.values()) == len(tiny.test)
    for name, pairs in buckets.items():
        lo, hi = BUCKETS[name]
        assert all(lo <= len(p.src) <= hi for p in pairs)
    with pytest.raises(ValueError, match="outside the buckets"):
        bucket_of(51)


def test_every_word_is_aligned_within_its_sentence(tiny):
    for pair in tiny.train + tiny.test:
        assert all(0 <= i < len(pair.src) and 0 <= j < len(pair.tgt) for i, j in pair.alignment)
        assert {i for i, _ in pair.alignment} == set(range(len(pair.src)))
        assert {j for _, j in pair.alignment} == set(range(len(pair.tgt)))


def test_adjectives_follow_their_noun_in_the_target():
    adjectives = {a[0]: a[1:] for a in lx.ADJECTIVES}
    nouns = {n[0]: n for n in lx.NOUNS} | {n[1]: n for n in lx.NOUNS}
    pairs = [p for p in load_corpus("tiny").train if any(w in adjectives for w in p.src)]
    assert len(pairs) > 50
    swapped = 0
    for pair in pairs:
        links = dict(pair.alignment)  # adjectives and nouns have one link each
        for i in range(len(pair.src) - 1):
            if pair.src[i] in adjectives and pair.src[i + 1] in nouns and pair.src[i + 1] != "'s":
                assert links[i] > links[i + 1], (pair.src, pair.tgt)  # adjective after noun in French
                swapped += 1
    assert swapped > 50


def test_articles_and_adjectives_agree_with_the_noun():
    gender = {}
    for _, _, fr_sg, fr_pl, g in lx.NOUNS:
        gender[fr_sg] = gender[fr_pl] = g
    verbs = {form for table in (lx.TRANSITIVE_VERBS, lx.INTRANSITIVE_VERBS) for v in table for form in v[2:]}
    # forms of one gender only, and not also a verb ("court": short, and runs)
    masculine = {a[1] for a in lx.ADJECTIVES} - {a[2] for a in lx.ADJECTIVES} - verbs
    feminine = {a[2] for a in lx.ADJECTIVES} - {a[1] for a in lx.ADJECTIVES} - verbs
    checked = 0
    for pair in load_corpus("tiny").train:
        for j in range(len(pair.tgt) - 1):
            word, following = pair.tgt[j], pair.tgt[j + 1]
            if word in ("le", "un") and following in gender:
                assert gender[following] == lx.MASC, pair.tgt
                checked += 1
            if word in ("la", "une") and following in gender:
                assert gender[following] == lx.FEM, pair.tgt
                checked += 1
            if word in gender and following in masculine:
                assert gender[word] == lx.MASC, pair.tgt
            if word in gender and following in feminine:
                assert gender[word] == lx.FEM, pair.tgt
    assert checked > 200


def test_a_pair_prints_with_its_alignment_grid():
    pair = Pair(("the", "red", "cat", "."), ("le", "chat", "rouge", "."), ((0, 0), (1, 2), (2, 1), (3, 3)))
    text = str(pair)
    assert "EN: the red cat ." in text and "FR: le chat rouge ." in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[4:8]}
    assert rows["chat"] == [".", ".", "#", "."] and rows["rouge"] == [".", "#", ".", "."]
    expected = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    torch.testing.assert_close(pair.alignment_matrix(), expected)


def test_vocabularies_put_the_specials_first_and_map_unknown_words_to_unk(tiny):
    for vocab in (tiny.src_vocab, tiny.tgt_vocab):
        assert vocab.itos[:4] == [PAD, SOS, EOS, UNK]
        assert (vocab.pad, vocab.sos, vocab.eos, vocab.unk) == (0, 1, 2, 3)
    assert 200 <= len(tiny.src_vocab) <= 500 and 200 <= len(tiny.tgt_vocab) <= 500
    every_word = {w for p in tiny.train + tiny.test for w in p.src}
    assert tiny.src_vocab.unk not in tiny.src_vocab.encode(sorted(every_word))
    assert tiny.src_vocab.encode(["zebra"]) == [3]
    vocab = Vocab(["b", "a"])
    assert vocab.decode([1, 4, 5, 0, 2, 4]) == ["a", "b"]  # <sos> and <pad> dropped, stops at <eos>


def test_batches_are_padded_teacher_forcing_pairs(tiny):
    pairs = tiny.test
    seen = 0
    for batch in batches(pairs, tiny.src_vocab, tiny.tgt_vocab, batch_size=7):
        B = batch.src.shape[0]
        assert B <= 7 and len(set(batch.src_lengths.tolist())) == 1  # one source length per batch
        assert (batch.tgt_in[:, 0] == 1).all()
        for row, pair in enumerate(batch.pairs):
            T = int(batch.tgt_lengths[row])
            assert batch.tgt_out[row, T - 1] == 2 and (batch.tgt_out[row, T:] == 0).all()
            assert tiny.tgt_vocab.decode(batch.tgt_out[row]) == list(pair.tgt)
            assert batch.tgt_in[row, 1:T].tolist() == batch.tgt_out[row, : T - 1].tolist()
            assert tiny.src_vocab.decode(batch.src[row]) == list(pair.src)
        seen += B
    assert seen == len(pairs)
    mixed = next(batches(pairs, tiny.src_vocab, tiny.tgt_vocab, batch_size=len(pairs), same_length=False))
    assert mixed.src.shape == (len(pairs), 50) and (mixed.src[0, 5:] == 0).all()
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(pairs, tiny.src_vocab, tiny.tgt_vocab, batch_size=0))


def test_shuffled_batches_depend_on_the_seed_only(tiny):
    def order(seed):
        return [b.pairs for b in batches(tiny.train, tiny.src_vocab, tiny.tgt_vocab, 16, shuffle=True, seed=seed)]
    assert order(3) == order(3) and order(3) != order(4)


def test_the_fingerprint_changes_with_the_corpus():
    assert corpus_fingerprint("tiny") == corpus_fingerprint("tiny", 0)
    assert corpus_fingerprint("tiny") != corpus_fingerprint("tiny", 1)
    with pytest.raises(ValueError, match="size must be one of"):
        load_corpus("huge")
