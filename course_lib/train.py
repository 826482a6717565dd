"""One training loop for every model of lessons 01-06, checkpoints, and the recipes of the shipped ones.

``train(model, corpus, steps=...)`` trains with teacher forcing (the decoder reads the reference's
previous token, not its own guess), Adam, gradient-norm clipping and a seeded batch order, with a
``tqdm.auto`` progress bar that shows the loss. The bar is shown in a notebook (as a widget) and in a
terminal; it stays silent under ``nbgrader autograde`` and wherever stderr is not a terminal, since
nbgrader zeroes a grade cell that writes to stderr.

``python -m course_lib.train MODEL [--seed N] [--tiny] [--out PATH]`` reproduces a shipped checkpoint
from scratch with its recipe (``RECIPES``), or, with ``--tiny``, runs a few steps on the tiny corpus.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from course_lib.data import Corpus, Pair, batches, corpus_fingerprint, load_corpus
from course_lib.seq2seq import MODEL_NAMES, ModelConfig, Seq2Seq, build_model

__all__ = [
    "Recipe", "RECIPES", "TINY", "train", "sequence_loss", "show_progress",
    "save_checkpoint", "load_checkpoint", "shipped_checkpoint_path", "shipped_models",
    "shipped_seeds", "checkpoint_name",
]


@dataclass(frozen=True)
class Recipe:
    """How a shipped checkpoint was trained. Models compared on one figure share sizes and steps."""

    steps: int = 2400
    batch_size: int = 128
    lr: float = 2e-3
    clip: float = 1.0
    embed_size: int = 64
    hidden_size: int = 128
    num_layers: int = 2
    corpus: str = "full"

    def model_config(self) -> ModelConfig:
        return ModelConfig(self.embed_size, self.hidden_size, self.num_layers)


# One recipe for every shipped model of lessons 01-06 (MODEL_NAMES): equal sizes, steps and batches, so
# that any two of them can share a figure. On 2 CPU cores with one thread per run, a step of batch 128
# takes 0.08 s (LSTM) to 0.25 s (RNNsearch, whose decoder attends step by step): 3 to 10 minutes a model.
RECIPES: dict[str, Recipe] = {name: Recipe() for name in MODEL_NAMES}
# A few seconds on the tiny corpus: what `--tiny` and the tests run.
TINY = Recipe(steps=6, batch_size=8, embed_size=16, hidden_size=24, num_layers=2, corpus="tiny")


def show_progress() -> bool:
    """Whether a progress bar may be drawn: in a notebook kernel or a terminal, never under autograde.

    In a Jupyter kernel ``tqdm.auto`` draws a widget (display data, not stderr); elsewhere it writes to
    stderr, which is only wanted when stderr is a terminal.
    """
    if os.environ.get("NBGRADER_EXECUTION"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = None
    if get_ipython is not None and getattr(get_ipython(), "kernel", None) is not None:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """Mean cross-entropy over the non-padding positions: logits ``(B, T, V)``, targets ``(B, T)``."""
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad)  # (B·T, V)


def _endless_batches(corpus: Corpus, pairs: Sequence[Pair], batch_size: int, seed: int):
    epoch = 0
    while True:
        yield from batches(pairs, corpus.src_vocab, corpus.tgt_vocab, batch_size,
                           shuffle=True, seed=seed * 100_003 + epoch)
        epoch += 1


def train(
    model: Seq2Seq,
    corpus: Corpus,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    clip: float = 1.0,
    seed: int = 0,
    progress: bool | None = None,
    pairs: Sequence[Pair] | None = None,
) -> list[float]:
    """Train ``model`` in place for ``steps`` batches of ``corpus.train``; returns the loss of each step.

    ``pairs`` trains on a subset instead (a lesson's short live run on short sentences, say).

    Teacher forcing: the decoder's input is ``<sos>`` followed by the reference target, and the loss
    is the cross-entropy of the next reference token at every position. Gradients are clipped to a
    global norm of ``clip`` (Sutskever et al. §3.4 clip at 5; our smaller models train better at 1).
    ``seed`` fixes the batch order; initialise the model under ``torch.manual_seed`` for a
    reproducible run. ``progress=None`` shows the bar where ``show_progress()`` allows it.
    """
    if steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps}")
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    stream = _endless_batches(corpus, corpus.train if pairs is None else pairs, batch_size, seed)
    losses: list[float] = []
    model.train()
    bar = tqdm(total=steps, desc=f"training {model.name or type(model).__name__}",
               disable=not (show_progress() if progress is None else progress), leave=True)
    for _ in range(steps):
        batch = next(stream)
        loss = sequence_loss(model(batch.src, batch.src_lengths, batch.tgt_in), batch.tgt_out)
        optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimiser.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    model.eval()
    return losses


# --- checkpoints -------------------------------------------------------------------------------

_CHECKPOINTS = "checkpoints"


def shipped_checkpoint_path(name: str) -> Path:
    """Where the package keeps the shipped checkpoint of model ``name``."""
    return Path(str(resources.files("course_lib") / _CHECKPOINTS / f"{name}.pt"))


def shipped_models() -> list[str]:
    """The models that have a shipped checkpoint, in the course's order."""
    return [name for name in MODEL_NAMES if shipped_checkpoint_path(name).is_file()]


def checkpoint_name(name: str, seed: int = 0, tiny: bool = False) -> str:
    """``luong-dot`` for seed 0, ``luong-dot-seed1`` for seed 1 (lesson 04 ships three seeds)."""
    return name + ("-tiny" if tiny else "") + (f"-seed{seed}" if seed else "")


def shipped_seeds(name: str) -> list[int]:
    """The seeds of model ``name`` that have a shipped checkpoint."""
    folder = shipped_checkpoint_path(name).parent
    seeds = [0] if shipped_checkpoint_path(name).is_file() else []
    found = (path.stem.removeprefix(f"{name}-seed") for path in folder.glob(f"{name}-seed*.pt"))
    return seeds + sorted(int(seed) for seed in found if seed.isdigit())


def save_checkpoint(path: str | Path, model: Seq2Seq, recipe: Recipe, seed: int, command: str,
                    losses: list[float], seconds: float, half: bool = True) -> None:
    """Weights (float16 with ``half``), recipe, seed, command and the corpus's fingerprint."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({
        "model": model.name,
        "state_dict": state,
        "recipe": asdict(recipe),
        "seed": seed,
        "command": command,
        "corpus": recipe.corpus,
        "corpus_fingerprint": corpus_fingerprint(recipe.corpus),
        "vocab_sizes": [model.src_vocab_size, model.tgt_vocab_size],
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "train_seconds": round(seconds, 1),
        "torch": str(torch.__version__),
    }, path)


def load_checkpoint(name_or_path: str | Path) -> tuple[Seq2Seq, dict]:
    """A shipped model by name (``"gru-encdec"``...) or a checkpoint file: ``(model, metadata)``.

    The model is in float32 and in eval mode; ``metadata`` holds the recipe, seed, command and
    corpus fingerprint it was saved with. Nothing is downloaded.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = shipped_checkpoint_path(str(name_or_path))
        if not path.is_file():
            raise ValueError(f"no shipped checkpoint for {name_or_path!r}; shipped: {shipped_models()}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    recipe = Recipe(**saved["recipe"])
    model = build_model(saved["model"], *saved["vocab_sizes"], recipe.model_config())
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in saved["state_dict"].items()})
    model.eval()
    metadata = {k: v for k, v in saved.items() if k != "state_dict"}
    return model, metadata


def run(name: str, seed: int = 0, tiny: bool = False, out: str | Path | None = None,
        progress: bool | None = None, threads: int = 1) -> Path:
    """Train model ``name`` with its recipe (or ``TINY``) from scratch and save the checkpoint.

    ``threads`` sets torch's CPU threads: these models are small, and one thread per run was the
    fastest measured (two runs of two threads each on 2 cores were ten times slower than one each).
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; the course's models are {list(MODEL_NAMES)}")
    torch.set_num_threads(threads)
    recipe = TINY if tiny else RECIPES.get(name, Recipe())
    corpus = load_corpus(recipe.corpus)
    torch.manual_seed(seed)
    random.seed(seed)
    model = build_model(name, len(corpus.src_vocab), len(corpus.tgt_vocab), recipe.model_config())
    started = time.perf_counter()
    losses = train(model, corpus, recipe.steps, recipe.batch_size, recipe.lr, recipe.clip, seed, progress)
    seconds = time.perf_counter() - started
    command = f"python -m course_lib.train {name} --seed {seed}" + (" --tiny" if tiny else "")
    path = Path(out) if out is not None else Path("checkpoints") / f"{checkpoint_name(name, seed, tiny)}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, recipe, seed, command, losses, seconds)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=list(MODEL_NAMES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a few steps of a small model on the tiny corpus")
    parser.add_argument("--out", help="where to write the checkpoint (default: checkpoints/MODEL.pt)")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads (default: 1)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="force the progress bar on or off (default: on in a terminal)")
    args = parser.parse_args(argv)
    try:
        path = run(args.model, args.seed, args.tiny, args.out, args.progress, args.threads)
    except ValueError as error:
        parser.error(str(error))
    print(f"saved {path}; evaluate it with: python -m course_lib.evaluate {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
