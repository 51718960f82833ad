"""RAR: reasoning-augmented representations (arXiv 2602.07125).

A generator (a VLM for images, any LM for text) rewrites both sides of retrieval before
embedding: corpus images get dense factual captions (``Visual Context:`` appended to
image+text entries), image queries get short captions, QA-style queries get their
deictic references resolved (the generator sees the image), and modification-style
queries are distilled into target constraints from the text alone (the reference image
is never shown, so the rewrite cannot describe the reference instead of the change).
Text-only items pass through unchanged. Caption caps (100 words for the corpus, 50 for
queries) are enforced on the output, whatever the generator writes. The retriever must
then be fine-tuned on the enhanced pairs (`ContrastiveTrainer`): enhanced text is a
different distribution from the sparse originals.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CORPUS_WORDS = 100
QUERY_WORDS = 50

CAPTION_PROMPT = (
    "Describe this image in under {word_limit} words. "
    "Identify the main object, entity, or scene. "
    "List: colors, materials, text/logos, named entities. "
    "No aesthetic or subjective language.\nDescription:"
)
QA_RESOLVE_PROMPT = (
    "Rewrite this question by resolving ambiguous references "
    "(e.g., 'this', 'the one shown') to explicit visual descriptions. "
    "Add at most 5 words of visual detail. Delete filler adjectives.\n"
    "Question: {query_text}\nRewritten question:"
)
MODIFICATION_PROMPT = (
    "Extract target attribute keywords from this instruction. "
    "Delete filler verbs (is, has, make, change, show, find). "
    "Preserve ALL descriptive adjectives and nouns.\n"
    "Instruction: {query_text}\nKeywords:"
)

ENTRY_KINDS = ("text", "image", "image+text")
QUERY_KINDS = ("text", "image", "qa", "modification")

# Instruction-like wording that asks for a changed version of the reference image.
_MODIFICATION = re.compile(
    r"\b(but|instead|change|changed|make it|make them|replace|replaced|without|"
    r"more|less|in (?:a |an )?\w+ (?:color|colour)|same .* in|similar .* (?:but|in|with)|"
    r"turn|swap|add|remove|is (?:now )?\w+er)\b",
    re.IGNORECASE,
)


@dataclass
class Item:
    """A corpus entry or a query: text, an image (PIL image, path or bytes), or both.

    ``kind`` overrides the classification (one of `ENTRY_KINDS` / `QUERY_KINDS`);
    ``label`` is an optional relevance label (items with equal labels match).
    """

    text: str | None = None
    image: Any = None
    kind: str | None = None
    label: Any = None


def _has_text(item: Item) -> bool:
    return bool(item.text and item.text.strip())


def classify_entry(item: Item) -> str:
    """``"text"``, ``"image"`` or ``"image+text"``."""
    if item.kind is not None:
        if item.kind not in ENTRY_KINDS:
            raise ValueError(f"unknown corpus entry kind {item.kind!r}; expected {ENTRY_KINDS}")
        return item.kind
    if item.image is not None:
        return "image+text" if _has_text(item) else "image"
    if _has_text(item):
        return "text"
    raise ValueError("a corpus entry needs text, an image or both")


def classify_query(item: Item) -> str:
    """``"text"``, ``"image"``, ``"qa"`` or ``"modification"`` (image + instruction)."""
    if item.kind is not None:
        if item.kind not in QUERY_KINDS:
            raise ValueError(f"unknown query kind {item.kind!r}; expected {QUERY_KINDS}")
        return item.kind
    if item.image is None:
        if _has_text(item):
            return "text"
        raise ValueError("a query needs text, an image or both")
    if not _has_text(item):
        return "image"
    text = item.text.strip()
    if text.endswith("?") or not _MODIFICATION.search(text):
        return "qa"
    return "modification"


def cap_words(text: str, limit: int) -> str:
    """The first paragraph of `text`, cut to at most `limit` words."""
    text = text.strip().split("\n\n")[0].replace("\n", " ")
    words = text.split()
    return " ".join(words[:limit])


class RAREnhancer:
    """Enhance corpus entries and queries with a `Generator`.

    Args:
        generator: ``generate(prompt, images=None) -> str``; ``generate_batch`` is used
            when present (the evidex generators cache on disk).
        corpus_words, query_words: caps enforced on the output.
    """

    def __init__(
        self, generator: Any, corpus_words: int = CORPUS_WORDS, query_words: int = QUERY_WORDS
    ) -> None:
        self.generator = generator
        self.corpus_words, self.query_words = corpus_words, query_words

    def _run(self, jobs: list[tuple[str, Any]]) -> list[str]:
        if not jobs:
            return []
        prompts = [p for p, _ in jobs]
        images = [[im] if im is not None else None for _, im in jobs]
        if hasattr(self.generator, "generate_batch"):
            return list(self.generator.generate_batch(prompts, images))
        return [self.generator.generate(p, im) for p, im in zip(prompts, images)]

    def entry_jobs(self, item: Item) -> tuple[str, Any] | None:
        """The (prompt, image) the generator gets for a corpus entry, or None."""
        if classify_entry(item) == "text":
            return None
        return CAPTION_PROMPT.format(word_limit=self.corpus_words), item.image

    def query_jobs(self, item: Item) -> tuple[str, Any] | None:
        """The (prompt, image) for a query, or None (text-only: unchanged)."""
        kind = classify_query(item)
        if kind == "text":
            return None
        if kind == "image":
            return CAPTION_PROMPT.format(word_limit=self.query_words), item.image
        if kind == "qa":
            return QA_RESOLVE_PROMPT.format(query_text=item.text.strip()), item.image
        # Modification: the text alone, never the reference image.
        return MODIFICATION_PROMPT.format(query_text=item.text.strip()), None

    def enhance_corpus(self, items: Sequence[Item]) -> list[str]:
        """Enhanced corpus texts: captions for images, ``text + Visual Context`` for
        image+text entries, text-only entries unchanged."""
        jobs = [self.entry_jobs(i) for i in items]
        outputs = iter(self._run([j for j in jobs if j is not None]))
        out = []
        for item, job in zip(items, jobs):
            if job is None:
                out.append(item.text)
                continue
            caption = cap_words(next(outputs), self.corpus_words)
            if classify_entry(item) == "image":
                out.append(caption)
            else:
                out.append(f"{item.text.strip()}\nVisual Context: {caption}")
        return out

    def enhance_queries(self, items: Sequence[Item]) -> list[str]:
        """Enhanced query texts (at most `query_words` words when rewritten)."""
        jobs = [self.query_jobs(i) for i in items]
        outputs = iter(self._run([j for j in jobs if j is not None]))
        return [
            item.text if job is None else cap_words(next(outputs), self.query_words)
            for item, job in zip(items, jobs)
        ]
