"""Language-model proposals for CRINN: a contrastive prompt, code extraction, and an
optional policy-gradient step on the scored proposals.

Backends: a transformers causal LM from a local path (:class:`TransformersBackend`)
and any OpenAI-compatible chat endpoint (:class:`OpenAIBackend`).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ..kernels import abi_header
from .archive import Archive, Candidate
from .templates import KERNEL_SLOTS, Proposal, builtin_config, render

TASK = (
    "You optimise one kernel of an HNSW vector index in C++17 for speed. The score is the "
    "area under the queries-per-second versus recall@10 curve over recall 0.85-0.95, "
    "measured on one core; results must stay correct (the same recall as the reference). "
    "The kernel is a shared library implementing this C ABI:"
)
SLOT_SYMBOL = {
    "search": "evidex_search",
    "construction": "evidex_select_neighbors",
    "refinement": "evidex_refine",
}


class Backend(Protocol):
    """Generates one completion per prompt."""

    name: str

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, temperature: float
    ) -> list[str]: ...


class TransformersBackend:
    """A transformers causal LM (sampled generation; greedy at temperature 0).

    Args:
        model, tokenizer: e.g. from :func:`evidex.train.rl.load_causal_lm`.
        name: names the model in the archive.
    """

    def __init__(self, model: Any, tokenizer: Any, name: str = "local") -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    @classmethod
    def from_path(cls, path: str) -> TransformersBackend:
        """A model folder, or a ``.gguf`` file (dequantised once and cached)."""
        from ..train.rl import load_causal_lm

        if path.endswith(".gguf"):
            model, tok = load_causal_lm(os.path.dirname(path) or ".", os.path.basename(path))
        else:
            model, tok = load_causal_lm(path)
        return cls(model, tok, name=path)

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, temperature: float
    ) -> list[str]:
        import torch

        tok, model = self.tokenizer, self.model
        side, tok.padding_side = tok.padding_side, "left"
        try:
            batch = tok(list(prompts), return_tensors="pt", padding=True)
        finally:
            tok.padding_side = side
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=0.95 if temperature > 0 else None,
                    pad_token_id=tok.pad_token_id,
                )
        finally:
            model.train(was_training)
        new = out[:, batch["input_ids"].shape[1] :]
        return tok.batch_decode(new, skip_special_tokens=True)


# HTTP statuses worth another try: rate limits and server-side trouble. Anything else
# (bad request, authentication, unknown model) fails at once.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 16 << 20


class OpenAIBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint.

    Transient failures (HTTP 408/409/425/429/5xx, refused or reset connections,
    timeouts) are retried with exponential backoff and full jitter, honouring a
    ``Retry-After`` header; other HTTP errors fail at once. One failed request never
    ends a round silently: after the last try, RuntimeError names the endpoint, the
    attempts and the last error.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``; default ``$OPENAI_BASE_URL``.
        model: default ``$OPENAI_MODEL``.
        api_key: default ``$OPENAI_API_KEY`` (may be empty for local servers).
        timeout: seconds per request.
        max_retries: further tries after the first.
        backoff: seconds before the first retry; doubles each time, up to `max_backoff`.
        sleep: how to wait (for tests).
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        sleep: Any = time.sleep,
    ) -> None:
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
        self.model = model or os.environ.get("OPENAI_MODEL") or ""
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        if not self.base_url or not self.model:
            raise ValueError(
                "OpenAIBackend needs base_url and model (or OPENAI_BASE_URL, OPENAI_MODEL)"
            )
        if not timeout > 0 or max_retries < 0 or backoff < 0 or max_backoff < backoff:
            raise ValueError("need timeout > 0, max_retries >= 0 and 0 <= backoff <= max_backoff")
        self.timeout = timeout
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._sleep = sleep
        self._random = random.Random()
        self.name = f"{self.model}@{self.base_url}"

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Full jitter over the exponential cap, or the server's Retry-After (capped)."""
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff)
            except ValueError:
                pass  # an HTTP date: fall back to our own schedule
        cap = min(self.max_backoff, self.backoff * 2**attempt)
        return self._random.uniform(0, cap)

    def _post(self, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            self.base_url + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})},
        )  # fmt: skip
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read(MAX_RESPONSE_BYTES + 1)
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise RuntimeError(f"LLM endpoint {self.base_url} sent more than 16 MiB")
                return json.loads(raw)
            except urllib.error.HTTPError as e:
                if e.code not in RETRY_STATUSES:
                    raise RuntimeError(
                        f"LLM endpoint {self.base_url} refused the request: HTTP {e.code} "
                        f"{e.reason}"
                    ) from e
                last = f"HTTP {e.code} {e.reason}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = str(getattr(e, "reason", e))
            except json.JSONDecodeError as e:
                last = f"malformed JSON ({e})"
            if attempt < self.max_retries:
                self._sleep(self._delay(attempt, retry_after))
        raise RuntimeError(
            f"LLM endpoint {self.base_url} failed {self.max_retries + 1} times; last: {last}"
        )

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, temperature: float
    ) -> list[str]:
        out = []
        for prompt in prompts:
            data = self._post(
                {
                    "model": self.model,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_new_tokens,
                    "temperature": temperature,
                }
            )
            try:
                content = data["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError) as e:
                raise RuntimeError(f"LLM endpoint returned no choices: {str(data)[:200]}") from e
            if not isinstance(content, str):
                raise RuntimeError(f"LLM endpoint returned non-text content: {str(content)[:200]}")
            out.append(content)
        return out


def backend_from_args(llm: str, url: str | None, model: str | None) -> Backend:
    if llm == "openai":
        return OpenAIBackend(url, model)
    return TransformersBackend.from_path(llm)


# ------------------------------------------------------------------ prompts
def contrastive_prompt(
    slot: str,
    current: str,
    best: Sequence[tuple[Candidate, str]],
    worst: Sequence[tuple[Candidate, str]],
) -> str:
    """CRINN's contrastive prompt: the task and ABI, better and worse variants with
    their scores (and the errors of failed ones), then the request."""
    parts = [TASK, "```c\n" + abi_header().read_text() + "```"]
    parts.append(f"Implement `{SLOT_SYMBOL[slot]}` and `evidex_kernel_abi_version`.")
    for title, group in (("Faster variants", best), ("Slower or failed variants", worst)):
        if not group:
            continue
        parts.append(f"## {title}")
        for cand, source in group:
            verdict = f"score {cand.score:.0f}" if cand.ok else f"score 0 ({cand.reason})"
            parts.append(f"### {cand.id}: {verdict}\n```cpp\n{_excerpt(source)}\n```")
    parts.append(
        "## The current best kernel\n```cpp\n" + current + "\n```\n"
        "Compare the faster and slower variants, then write an improved version of the "
        "current best kernel: either the whole file in one ```cpp block, or a unified diff "
        "against it in one ```diff block."
    )
    return "\n\n".join(parts)


def _excerpt(source: str, limit: int = 1500) -> str:
    return source if len(source) <= limit else source[:limit] + "\n// ..."


_FENCE = re.compile(r"```([A-Za-z0-9+_-]*)[ \t]*\n(.*?)```", re.S)


def extract_code(text: str, current: str) -> str:
    """The kernel source in a model's answer: the largest ```cpp block that exports
    a slot, or a ```diff block applied to `current`.

    Raises:
        ValueError: no usable code (malformed model output).
    """
    blocks = _FENCE.findall(text)
    if not blocks and "```" in text:  # an unterminated final block
        lang, _, body = text.rsplit("```", 1)[1].partition("\n")
        blocks = [(lang.strip(), body)]
    diffs = [b for lang, b in blocks if lang.lower() in ("diff", "patch")]
    code = [b for lang, b in blocks if lang.lower() not in ("diff", "patch") and "evidex_" in b]
    if code:
        return max(code, key=len)
    if diffs:
        return apply_unified_diff(current, diffs[0])
    raise ValueError(
        "malformed model output: no ```cpp block exporting an evidex_ symbol and no ```diff"
    )


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def apply_unified_diff(source: str, diff: str) -> str:
    """Apply a unified diff to `source`; context lines must match.

    Raises:
        ValueError: a hunk that does not apply, or no hunk at all.
    """
    lines = source.splitlines()
    out: list[str] = []
    pos = 0
    hunks = 0
    diff_lines = diff.splitlines()
    i = 0
    while i < len(diff_lines):
        m = _HUNK.match(diff_lines[i])
        if not m:
            i += 1
            continue
        hunks += 1
        start = int(m.group(1)) - 1 if int(m.group(1)) > 0 else 0
        if start < pos:
            raise ValueError("malformed diff: overlapping hunks")
        out.extend(lines[pos:start])
        pos = start
        i += 1
        while i < len(diff_lines) and not diff_lines[i].startswith("@@"):
            line = diff_lines[i]
            tag, text = (line[:1], line[1:]) if line else (" ", "")
            if tag in (" ", "-"):
                if pos >= len(lines) or lines[pos].rstrip() != text.rstrip():
                    raise ValueError(f"malformed diff: hunk {hunks} does not match line {pos + 1}")
                if tag == " ":
                    out.append(lines[pos])
                pos += 1
            elif tag == "+":
                out.append(text)
            elif tag != "\\":
                break
            i += 1
    if hunks == 0:
        raise ValueError("malformed diff: no hunk")
    out.extend(lines[pos:])
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ proposer
class LLMProposer:
    """Proposes kernels by prompting a language model with the archive.

    Args:
        slot: the kernel slot.
        backend: a :class:`Backend`.
        shots: how many best and worst variants the prompt shows.
        max_new_tokens, temperature: generation settings.
    """

    origin = "llm"

    def __init__(
        self,
        slot: str,
        backend: Backend,
        shots: int = 2,
        max_new_tokens: int = 1024,
        temperature: float = 0.8,
        archive: Archive | None = None,
        learning_rate: float = 0.0,
    ) -> None:
        if slot not in KERNEL_SLOTS:
            raise ValueError(f"a language model writes kernels for {KERNEL_SLOTS}, not {slot!r}")
        self.slot, self.backend, self.shots = slot, backend, shots
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.archive = archive
        self.history: list[tuple[str, str]] = []  # (prompt, completion) per proposal
        self.learning_rate = learning_rate
        self._optimizer: Any = None
        self._round: list[tuple[str, str]] = []

    def _source(self, cand: Candidate) -> str:
        if self.archive is not None:
            path = self.archive.folder(cand.id) / "source.cpp"
            if path.exists():
                return path.read_text()
        return render(self.slot, cand.config) if cand.config else ""

    def prompt(self, archive: Iterable[Candidate]) -> tuple[str, str]:
        """(prompt, the current best source)."""
        cands = [c for c in archive if c.slot == self.slot]
        ranked = sorted(cands, key=lambda c: -c.score)
        best = [c for c in ranked if c.ok][: self.shots]
        worst = [c for c in reversed(ranked)][: self.shots]
        worst = [c for c in worst if c not in best]
        current = self._source(best[0]) if best else render(self.slot, builtin_config(self.slot))
        pairs = lambda group: [(c, self._source(c)) for c in group]  # noqa: E731
        return contrastive_prompt(self.slot, current, pairs(best), pairs(worst)), current

    def propose(self, archive: Iterable[Candidate], n: int = 1) -> list[Proposal]:
        prompt, current = self.prompt(list(archive))
        completions = self.backend.generate([prompt] * n, self.max_new_tokens, self.temperature)
        out = []
        self._round = [(prompt, text) for text in completions]
        for text in completions:
            self.history.append((prompt, text))
            try:
                source = extract_code(text, current)
                out.append(Proposal(self.slot, source, self.origin, prompt=prompt))
            except ValueError as e:
                out.append(Proposal(self.slot, "", self.origin, prompt=prompt, error=str(e)))
        return out

    def learn(self, candidates: Sequence[Candidate]) -> float:
        """After a round is scored: one policy-gradient step of a local model on the
        round's completions, rewarded contrastively (:func:`contrastive_rewards`).
        A no-op unless ``learning_rate > 0`` and the backend is a local model."""
        if self.learning_rate <= 0 or not isinstance(self.backend, TransformersBackend):
            return 0.0
        if len(candidates) != len(self._round) or len(candidates) < 2:
            return 0.0
        import torch

        from ..rewards.ann import contrastive_rewards

        if self._optimizer is None:
            self._optimizer = torch.optim.AdamW(
                self.backend.model.parameters(), lr=self.learning_rate
            )
        rewards = contrastive_rewards([c.score for c in candidates])
        prompt = self._round[0][0]
        return policy_gradient_step(
            self.backend.model,
            self.backend.tokenizer,
            prompt,
            [text for _, text in self._round],
            rewards,
            self._optimizer,
        )


# ------------------------------------------------------------------ learning
def group_advantages(rewards: Sequence[float]) -> list[float]:
    """GRPO's group-relative advantages: (r - mean) / std within one prompt's group
    (zeros when all rewards are equal)."""
    import statistics

    if len(rewards) < 2:
        return [0.0] * len(rewards)
    mean = statistics.fmean(rewards)
    std = statistics.pstdev(rewards)
    return [0.0 if std == 0 else (r - mean) / std for r in rewards]


def policy_gradient_step(
    model: Any,
    tokenizer: Any,
    prompt: str,
    completions: Sequence[str],
    rewards: Sequence[float],
    optimizer: Any,
    max_tokens: int = 2048,
) -> float:
    """One GRPO-style update on a group of completions of one prompt: raise the
    log-likelihood of completions with positive group-relative advantage, lower
    it for negative ones (no KL term: the step is small and the model is
    reloaded per run). Returns the loss."""
    import torch

    adv = group_advantages(rewards)
    if not any(adv):
        return 0.0
    model.train()
    optimizer.zero_grad()
    p_ids = tokenizer(prompt, return_tensors="pt")["input_ids"][0][-max_tokens // 2 :]
    total = 0.0
    for completion, a in zip(completions, adv):
        if a == 0:
            continue
        c_ids = tokenizer(completion, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        c_ids = c_ids[: max_tokens // 2]
        if len(c_ids) == 0:
            continue
        ids = torch.cat([p_ids, c_ids])[None]
        logits = model(input_ids=ids).logits[0, len(p_ids) - 1 : -1]
        logp = torch.log_softmax(logits.float(), -1).gather(1, c_ids[:, None]).mean()
        loss = -a * logp / len(completions)
        loss.backward()
        total += float(loss.detach())
    optimizer.step()
    return total
