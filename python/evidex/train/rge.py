"""RGE: reasoning-guided embeddings from a causal LM.

The LM first writes a rationale for the instruction and input; the embedding is the LM's
hidden state after the rationale, at the last token of an ``<emb>`` marker. The marker is
plain text (existing vocabulary), so RGE adds no parameters: the same weights generate
and embed. Training is contrastive on (query with rationale, target) pairs with the
usual `InfoNCELoss`/`ContrastiveTrainer`; ``use_rationale=False`` embeds the query
without one (the ablation). Targets are embedded without rationales.

    rge = RGE.from_causal_lm(model, tokenizer, model_id="gemma-3-270m")
    queries = rge.with_rationales(raw_queries)       # generates (cached) and formats
    trainer = ContrastiveTrainer(rge.embedder, list(zip(queries, targets)), ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .embedder import Embedder
from .generation import CausalLMGenerator, GenerationCache

MARKER = "<emb>"
DEFAULT_INSTRUCTION = "Find the document that answers this query."


def rationale_prompt(instruction: str, text: str) -> str:
    """The prompt that asks the LM for a rationale."""
    return (
        f"Instruction: {instruction}\nQuery: {text}\n"
        "Think about what a matching document must contain, in one or two sentences.\n"
        "Rationale:"
    )


def embedding_text(instruction: str, text: str, rationale: str | None = None) -> str:
    """The text whose final hidden state is the embedding (rationale optional)."""
    body = f"Instruction: {instruction}\nQuery: {text}\n"
    if rationale is not None:
        body += f"Rationale: {rationale.strip()}\n"
    return body + f"Embedding: {MARKER}"


def document_text(text: str) -> str:
    """How a target is embedded: the document, then the marker."""
    return f"Document: {text}\nEmbedding: {MARKER}"


class RGE:
    """A causal LM that writes rationales and embeds after them.

    Args:
        embedder: an `Embedder` over the LM's decoder with ``last`` pooling (the last
            token is the end of the ``<emb>`` marker).
        generator: writes the rationales (the same LM, greedy, cached).
        instruction: the task instruction given to both.
        use_rationale: False embeds queries without rationales (ablation).
    """

    def __init__(
        self,
        embedder: Embedder,
        generator: CausalLMGenerator,
        instruction: str = DEFAULT_INSTRUCTION,
        use_rationale: bool = True,
    ) -> None:
        if embedder.pooling != "last":
            raise ValueError("RGE embeds at the last token (the <emb> marker): use pooling='last'")
        self.embedder, self.generator = embedder, generator
        self.instruction, self.use_rationale = instruction, use_rationale

    @classmethod
    def from_causal_lm(
        cls,
        model: Any,
        tokenizer: Any,
        model_id: str,
        instruction: str = DEFAULT_INSTRUCTION,
        use_rationale: bool = True,
        max_new_tokens: int = 48,
        max_length: int = 384,
        cache: str | GenerationCache | None = None,
    ) -> RGE:
        """Share one causal LM between generation and embedding (its decoder stack)."""
        embedder = Embedder(model.get_decoder(), tokenizer, pooling="last", max_length=max_length)
        generator = CausalLMGenerator(
            model, tokenizer, model_id, max_new_tokens=max_new_tokens, cache=cache
        )
        return cls(embedder, generator, instruction, use_rationale)

    def rationales(self, queries: Sequence[str]) -> list[str]:
        """One rationale per query (greedy, from the cache when seen)."""
        prompts = [rationale_prompt(self.instruction, q) for q in queries]
        return [r.split("\n")[0].strip() for r in self.generator.generate_batch(prompts)]

    def with_rationales(self, queries: Sequence[str]) -> list[str]:
        """Query texts ready to embed: with their rationale unless `use_rationale` is off."""
        queries = list(queries)
        if not self.use_rationale:
            return [embedding_text(self.instruction, q) for q in queries]
        return [
            embedding_text(self.instruction, q, r)
            for q, r in zip(queries, self.rationales(queries))
        ]

    def encode_queries(self, queries: Sequence[str], batch_size: int = 16) -> Any:
        """float32 query embeddings (rationales generated first when used)."""
        return self.embedder.encode(self.with_rationales(queries), batch_size=batch_size)

    def encode_documents(self, documents: Sequence[str], batch_size: int = 16) -> Any:
        """float32 target embeddings (no rationale)."""
        return self.embedder.encode([document_text(d) for d in documents], batch_size=batch_size)

    def training_pairs(
        self, queries: Sequence[str], targets: Sequence[str]
    ) -> list[tuple[str, str]]:
        """(query text with rationale, target text) pairs for `ContrastiveTrainer`."""
        if len(queries) != len(targets):
            raise ValueError(f"{len(queries)} queries for {len(targets)} targets")
        return list(zip(self.with_rationales(queries), [document_text(t) for t in targets]))
