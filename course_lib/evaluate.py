"""Greedy decoding, BLEU and exact match per source-length bucket, alignment error rate, and the
"quality vs source length" figure that lessons 01-06 each add a line to.

``python -m course_lib.evaluate MODEL [--json]`` prints the scores of a shipped checkpoint (or of a
checkpoint file) on the test set; ``--list`` names the shipped models. BLEU is ``sacrebleu``'s
corpus BLEU over each bucket, on the corpus's own tokens (``tokenize="none"``: the sentences are
tokenized already).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import sacrebleu
import torch
from matplotlib.axes import Axes

from course_lib.data import BUCKETS, Corpus, Pair, batches, load_corpus, make_batch
from course_lib.seq2seq import Seq2Seq

__all__ = [
    "greedy_decode", "translate", "bleu", "evaluate_model", "alignment_error_rate",
    "attention_on_reference", "decode_with_attention", "plot_quality_vs_length", "shipped_scores",
    "record_scores",
]


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    sos: int = 1,
    eos: int = 2,
    max_len: int | None = None,
    pad: int = 0,
) -> torch.Tensor:
    """The most likely next token at each step, for a batch; ``(B, T)`` ids, padded after ``<eos>``.

    Each sentence stops at its first ``<eos>`` (kept in the output); the batch stops when every
    sentence has stopped or after ``max_len`` tokens (default: twice the longest source, plus 10).
    """
    if max_len is None:
        max_len = 2 * int(src_lengths.max()) + 10
    state = model.encode(src, src_lengths)
    y = torch.full((src.shape[0],), sos, dtype=torch.long, device=src.device)
    finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    out = []
    for _ in range(max_len):
        logits, state, _ = model.decode_step(y, state)
        y = logits.argmax(dim=-1)  # (B,)
        out.append(torch.where(finished, torch.full_like(y, pad), y))
        finished |= y == eos
        if bool(finished.all()):
            break
    return torch.stack(out, dim=1)


def translate(model: Seq2Seq, pairs: Sequence[Pair], corpus: Corpus, batch_size: int = 200) -> list[list[str]]:
    """Greedy translations of ``pairs``' sources, as token lists, in the order given."""
    model.eval()
    hypotheses: list[list[str]] = []
    for batch in batches(list(pairs), corpus.src_vocab, corpus.tgt_vocab, batch_size, same_length=False):
        ids = greedy_decode(model, batch.src, batch.src_lengths, corpus.tgt_vocab.sos, corpus.tgt_vocab.eos)
        hypotheses.extend(corpus.tgt_vocab.decode(row) for row in ids)
    return hypotheses


def bleu(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu's corpus BLEU (0-100) of token lists, scored on these very tokens."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    score = sacrebleu.corpus_bleu([" ".join(h) for h in hypotheses], [[" ".join(r) for r in references]],
                                  tokenize="none", force=True)
    return float(score.score)


def alignment_error_rate(predicted: Sequence[set[tuple[int, int]]], true: Sequence[set[tuple[int, int]]]) -> float:
    """AER (Och & Ney 2003) with every true link sure: ``1 - 2|A∩S| / (|A| + |S|)``, over a corpus.

    ``predicted`` and ``true`` hold one set of ``(source index, target index)`` links per sentence.
    """
    if len(predicted) != len(true):
        raise ValueError(f"{len(predicted)} predicted alignments for {len(true)} true ones")
    hits = sum(len(set(a) & set(s)) for a, s in zip(predicted, true))
    total = sum(len(a) + len(s) for a, s in zip(predicted, true))
    return 1.0 - 2.0 * hits / total if total else 0.0


@torch.no_grad()
def attention_on_reference(model: Seq2Seq, pairs: Sequence[Pair], corpus: Corpus) -> list[torch.Tensor]:
    """Each pair's attention weights ``(len(tgt), len(src))`` while the model reads the reference.

    Teacher-forced: at step j the decoder has read the reference's first j-1 words and the weights
    say where it looks to write word j (the ``<eos>`` step is left out). Models without attention
    raise ``ValueError``.
    """
    if not model.has_attention:
        raise ValueError(f"model {model.name!r} has no attention weights")
    maps: list[torch.Tensor] = []
    for batch in batches(list(pairs), corpus.src_vocab, corpus.tgt_vocab, 200, same_length=False):
        state = model.encode(batch.src, batch.src_lengths)
        steps = []
        for t in range(batch.tgt_in.shape[1] - 1):
            _, state, weights = model.decode_step(batch.tgt_in[:, t], state)
            steps.append(weights)  # (B, S)
        stacked = torch.stack(steps, dim=1)  # (B, T-1, S)
        for row, pair in zip(stacked, batch.pairs):
            maps.append(row[: len(pair.tgt), : len(pair.src)])
    return maps


@torch.no_grad()
def decode_with_attention(model: Seq2Seq, pair: Pair, corpus: Corpus, max_len: int | None = None
                          ) -> tuple[list[str], torch.Tensor | None]:
    """One sentence's greedy translation (without ``<eos>``) and, for a model with attention, the
    weights ``(len(translation), len(source))`` it used to write each word (``None`` otherwise)."""
    model.eval()
    batch = make_batch([pair], corpus.src_vocab, corpus.tgt_vocab)
    max_len = max_len or 2 * len(pair.src) + 10
    state = model.encode(batch.src, batch.src_lengths)
    y = torch.tensor([corpus.tgt_vocab.sos])
    ids, rows = [], []
    for _ in range(max_len):
        logits, state, weights = model.decode_step(y, state)
        y = logits.argmax(dim=-1)  # (1,)
        if int(y) == corpus.tgt_vocab.eos:
            break
        ids.append(int(y))
        if weights is not None:
            rows.append(weights[0])
    weights = torch.stack(rows) if rows else (torch.zeros(0, len(pair.src)) if model.has_attention else None)
    return corpus.tgt_vocab.decode(ids), weights


def evaluate_model(model: Seq2Seq, corpus: Corpus | None = None, buckets: Sequence[str] | None = None
                   ) -> dict[str, dict[str, float]]:
    """BLEU and exact match (%) per source-length bucket of the test set, plus ``"aer"`` (%) per bucket
    for a model with attention (each target word aligned to its most attended source word, as Luong et
    al. score alignments, arXiv:1508.04025 §5.4). ``buckets`` picks some of ``BUCKETS`` (default: all)."""
    corpus = corpus or load_corpus()
    unknown = sorted(set(buckets or ()) - set(BUCKETS))
    if unknown:
        raise ValueError(f"unknown buckets {unknown}; the buckets are {list(BUCKETS)}")
    results: dict[str, dict[str, float]] = {"bleu": {}, "exact": {}}
    if model.has_attention:
        results["aer"] = {}
    for name, pairs in corpus.test_buckets().items():
        if buckets is not None and name not in buckets:
            continue
        references = [list(p.tgt) for p in pairs]
        hypotheses = translate(model, pairs, corpus)
        results["bleu"][name] = round(bleu(hypotheses, references), 2)
        results["exact"][name] = round(100.0 * sum(h == r for h, r in zip(hypotheses, references)) / len(pairs), 2)
        if model.has_attention:
            predicted = [{(int(i), j) for j, i in enumerate(m.argmax(dim=1))} for m in attention_on_reference(model, pairs, corpus)]
            results["aer"][name] = round(100.0 * alignment_error_rate(predicted, [set(p.alignment) for p in pairs]), 2)
    return results


_METRIC_LABELS = {"bleu": "BLEU", "exact": "exact match (%)", "aer": "alignment error rate (%)"}


def plot_quality_vs_length(
    scores: Mapping[str, Mapping],
    metric: str = "bleu",
    ax: Axes | None = None,
    title: str | None = "Translation quality against source length",
) -> Axes:
    """One line per model: ``metric`` per source-length bucket, the buckets along x.

    ``scores`` maps a label to what ``evaluate_model`` returns (or to its per-bucket dict directly).
    Pass the ``ax`` of an earlier call to add lines to the same figure, as lessons 01-06 do.
    """
    if metric not in _METRIC_LABELS:
        raise ValueError(f"metric must be one of {sorted(_METRIC_LABELS)}, got {metric!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 3.8), layout="constrained")
    names = list(BUCKETS)
    for label, result in scores.items():
        per_bucket = result[metric] if metric in result else result
        missing = [n for n in names if n not in per_bucket]
        if missing:
            raise ValueError(f"{label!r} has no {metric} for buckets {missing}; expected {names}")
        ax.plot(range(len(names)), [per_bucket[n] for n in names], marker="o", label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_xlabel("source sentence length (tokens)")
    ax.set_ylabel(_METRIC_LABELS[metric])
    if metric != "exact" and metric != "aer":
        ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title is not None:
        ax.set_title(title)
    return ax


# Every shipped checkpoint's scores, as `python -m course_lib.evaluate --record` measured them: a lesson
# that compares nine checkpoints reads them here instead of spending minutes decoding the test set.
# tests/test_train_evaluate.py evaluates shipped checkpoints again and holds them to these numbers.
SCORES_FILE = "scores.json"


def _scores_path():
    from course_lib.train import shipped_checkpoint_path

    return shipped_checkpoint_path("any").parent / SCORES_FILE


def shipped_scores() -> dict[str, dict[str, dict[str, float]]]:
    """``evaluate_model``'s result for every shipped checkpoint, by checkpoint name (``luong-dot``,
    ``luong-dot-seed1``...), as recorded when the checkpoints were made."""
    path = _scores_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing from the package: run python -m course_lib.evaluate --record")
    return json.loads(path.read_text())


def record_scores(names: Sequence[str] | None = None) -> dict:
    """Evaluate the shipped checkpoints ``names`` (default: all) and write their scores to the package."""
    from course_lib.train import load_checkpoint

    path = _scores_path()
    scores = json.loads(path.read_text()) if path.is_file() else {}
    folder = path.parent
    for name in names or sorted(p.stem for p in folder.glob("*.pt")):
        model, metadata = load_checkpoint(name)
        scores[name] = evaluate_model(model, load_corpus(metadata["corpus"]))
        print(name, json.dumps(scores[name]["bleu"]), flush=True)
    path.write_text(json.dumps(dict(sorted(scores.items())), indent=1) + "\n")
    return scores


def main(argv: list[str] | None = None) -> int:
    from course_lib.train import load_checkpoint, shipped_models

    parser = argparse.ArgumentParser(prog="python -m course_lib.evaluate",
                                     description="BLEU and exact match per source-length bucket of a checkpoint")
    parser.add_argument("model", nargs="?", help="a shipped model's name or a checkpoint file")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.add_argument("--list", action="store_true", help="name the shipped models and stop")
    parser.add_argument("--record", action="store_true",
                        help=f"evaluate the shipped checkpoint MODEL (default: every one) into the package's {SCORES_FILE}")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(shipped_models()))
        return 0
    if args.record:
        record_scores([args.model] if args.model else None)
        return 0
    if args.model is None:
        parser.error("name a model (see --list) or a checkpoint file")
    try:
        model, metadata = load_checkpoint(args.model)
    except ValueError as error:
        parser.error(str(error))
    results = evaluate_model(model, load_corpus(metadata["corpus"]))
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{metadata['model']}  (trained by: {metadata['command']})")
    print(f"{'bucket':>8} " + " ".join(f"{name:>7}" for name in BUCKETS))
    for metric, per_bucket in results.items():
        print(f"{metric:>8} " + " ".join(f"{per_bucket[name]:7.2f}" for name in BUCKETS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
