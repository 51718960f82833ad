"""The template search space of CRINN kernels and the proposer that walks it."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .archive import Candidate
from .layout import CODES, LAYOUT_SPACE, canonical_layout

# The kernel slots in the order CRINN optimises them, then the layout slot (the
# index's codes, block size, refinement and search tuning: settings of the
# built-in core, measured on the graph the winning kernels build).
KERNEL_SLOTS = ("construction", "search", "refinement")
SLOTS = (*KERNEL_SLOTS, "layout")

# Each knob: the values it may take (first = the built-in kernel's choice). The
# macros are documented at the top of kernel_template.cpp; EVX_NATIVE is a build
# option (1: -march=native; 0: the portable flags the package is built with).
SPACE: dict[str, dict[str, tuple[int, ...]]] = {
    "search": {
        "EVX_DISTANCE": (0, 1, 2),
        "EVX_NATIVE": (0, 1),
        "EVX_UNROLL": (4, 1, 2, 8, 16),
        "EVX_FIXED_DIM": (0,),  # TemplateProposer(dim=d) adds d
        "EVX_PREFETCH": (1, 0),
        "EVX_AHEAD": (0, 1, 2, 4, 8, 12, 16, 24, 32),
        "EVX_LINES": (0, 1, 2),
        "EVX_PREFETCH_LINKS": (3, 1, 0, 2),
        "EVX_BATCH": (0, 1),
        "EVX_QUEUE": (0, 1),
        "EVX_VISITED": (0, 1),
        "EVX_PATIENCE": (0, 16, 32, 64, 128),
        "EVX_PATIENCE_K": (10, 20),
        "EVX_ENTRY": (0, 1),
        "EVX_QUANT": (0, 1),
        "EVX_QUANT_WIDEN": (0, 2, 4, 8),
    },
    "construction": {
        "EVX_SELECT": (0, 1, 2, 3),
        "EVX_NATIVE": (0, 1),
        "EVX_ALPHA_X100": (120, 100, 105, 110, 115, 130),
        "EVX_EXTEND": (0, 2, 4, 8),
        "EVX_DISTANCE": (0, 1, 2),
        "EVX_UNROLL": (4, 8, 16),
    },
    "refinement": {
        "EVX_REFINE": (0, 1),
        "EVX_NATIVE": (0, 1),
        "EVX_REFINE_TOP": (4, 1, 2, 8, 16),
        "EVX_DISTANCE": (0, 1, 2),
        "EVX_UNROLL": (4, 8, 16),
    },
    "layout": LAYOUT_SPACE,
}

# The deliberately plain starting point of the first figure: scalar
# distances, no prefetch, hnswlib's two heaps.
REFERENCE = {
    "EVX_DISTANCE": 2,
    "EVX_PREFETCH": 0,
    "EVX_PREFETCH_LINKS": 0,
    "EVX_BATCH": 0,
    "EVX_QUEUE": 1,
}


# A knob whose every value the proposer tries once (the rest as built in) before it
# explores: the layout's kind of codes, which changes what every other knob does (a
# random start found sq8 on GloVe only at its 27th candidate).
COVER = {"layout": "EVX_CODES"}


def builtin_config(slot: str) -> dict[str, int]:
    """The configuration that reproduces the built-in kernel of `slot`."""
    _check_slot(slot)
    return {name: values[0] for name, values in SPACE[slot].items()}


def reference_config(slot: str) -> dict[str, int]:
    """The plain reference kernel of `slot` (scalar, no prefetch, heap queue)."""
    config = builtin_config(slot)
    config.update({k: v for k, v in REFERENCE.items() if k in config})
    return canonical(slot, config)


def canonical(slot: str, config: Mapping[str, int]) -> dict[str, int]:
    """`config` with knobs that have no effect set to their first value, so two
    configurations that build the same kernel compare equal."""
    _check_slot(slot)
    c = {name: int(config.get(name, values[0])) for name, values in SPACE[slot].items()}
    for name, value in c.items():
        if name == "EVX_FIXED_DIM" and value >= 0:
            continue  # any dimension
        if value not in SPACE[slot][name]:
            raise ValueError(f"{name}={value} is not in the {slot} space {SPACE[slot][name]}")
    first = {name: values[0] for name, values in SPACE[slot].items()}
    if c.get("EVX_DISTANCE") != 1 and "EVX_UNROLL" in c:
        c["EVX_UNROLL"] = first["EVX_UNROLL"]
    if c.get("EVX_DISTANCE") != 1 and "EVX_FIXED_DIM" in c:
        c["EVX_FIXED_DIM"] = 0
    if slot == "search":
        if not c["EVX_PREFETCH"]:
            c["EVX_AHEAD"], c["EVX_LINES"] = first["EVX_AHEAD"], first["EVX_LINES"]
        if not c["EVX_QUANT"]:
            c["EVX_QUANT_WIDEN"] = first["EVX_QUANT_WIDEN"]
        if c["EVX_QUEUE"] == 1 or not c["EVX_PATIENCE"]:
            c["EVX_PATIENCE"], c["EVX_PATIENCE_K"] = 0, first["EVX_PATIENCE_K"]
    if slot == "construction" and c["EVX_SELECT"] != 1:
        c["EVX_ALPHA_X100"] = first["EVX_ALPHA_X100"]
    if slot == "refinement" and not c["EVX_REFINE"]:
        c["EVX_REFINE_TOP"] = first["EVX_REFINE_TOP"]
    if slot == "layout":
        c = canonical_layout(c)
    return c


def config_key(slot: str, config: Mapping[str, int]) -> str:
    return slot + ":" + json.dumps(canonical(slot, config), sort_keys=True)


def render(slot: str, config: Mapping[str, int]) -> str:
    """The complete C++ source of a kernel library for `slot` under `config`
    (for the layout slot, which compiles nothing: the configuration as JSON)."""
    c = canonical(slot, config)
    if slot == "layout":
        return json.dumps(c, sort_keys=True, indent=1) + "\n"
    header = [f"// evidex CRINN candidate: slot {slot}", f"#define EVX_SLOT_{slot.upper()} 1"]
    header += [f"#define {name} {value}" for name, value in c.items()]
    body = resources.files("evidex.crinn").joinpath("kernel_template.cpp").read_text()
    return "\n".join(header) + "\n" + body


def _check_slot(slot: str) -> None:
    if slot not in SLOTS:
        raise ValueError(f"unknown kernel slot {slot!r}; expected one of {SLOTS}")


@dataclass
class Proposal:
    """A candidate to build: its source, and how it came about."""

    slot: str
    source: str
    origin: str  # "template" or "llm"
    config: dict[str, int] | None = None
    prompt: str | None = None
    error: str = ""  # set when the proposer could not produce code (e.g. malformed LLM output)
    native: bool = True  # build with -march=native


class TemplateProposer:
    """Proposes kernels from the template space: random configurations first
    (for the layout slot, each kind of code once before them), then single-knob
    changes, mutations and crossovers of the best in the archive
    (CRINN's learning from the comparison of fast and slow variants, over a
    discrete space). Never proposes a configuration twice (canonical form,
    across the archive).

    Args:
        slot: the kernel slot to optimise.
        seed: the random seed.
        explore: probability of a fresh random configuration once the archive
            has scored candidates.
        start: configuration of the first proposal (e.g. :func:`reference_config`).
        dim: the data's dimension: lets the search space compile it into the
            distance loop (``EVX_FIXED_DIM``).
        local: probability of an untried single-knob change of the best so far
            (hill climbing: a one-knob win is otherwise found only by chance,
            one knob value among dozens).
    """

    origin = "template"

    def __init__(
        self,
        slot: str,
        seed: int = 0,
        explore: float = 0.2,
        start: Mapping[str, int] | None = None,
        dim: int | None = None,
        local: float = 0.4,
    ) -> None:
        _check_slot(slot)
        self.slot = slot
        self.space = {name: tuple(values) for name, values in SPACE[slot].items()}
        if dim and "EVX_FIXED_DIM" in self.space:
            self.space["EVX_FIXED_DIM"] = (0, int(dim))
        if dim and "EVX_PQ_DIMS" in self.space:  # a subspace no wider than the data
            self.space["EVX_PQ_DIMS"] = tuple(v for v in self.space["EVX_PQ_DIMS"] if v <= dim)
        self.rng = random.Random(seed)
        self.explore = explore
        self.local = local
        self.start = canonical(slot, start) if start is not None else None
        self.seen: set[str] = set()
        self.covered: set[int] = set()  # values of COVER's knob proposed so far

    def propose(self, archive: Iterable[Candidate], n: int = 1) -> list[Proposal]:
        """Up to `n` new proposals (fewer when the space is exhausted)."""
        scored = []
        for c in archive:
            if c.slot != self.slot or c.config is None:
                continue
            try:  # an archive is files on disk: a configuration outside the space is skipped
                self.seen.add(config_key(self.slot, c.config))
            except (ValueError, TypeError):
                continue
            self._cover(c.config)
            scored.append(c)
        good = sorted((c for c in scored if c.score > 0), key=lambda c: -c.score)
        out: list[Proposal] = []
        for _ in range(n):
            for _attempt in range(200):
                config = self._next(good)
                key = config_key(self.slot, config)
                if key not in self.seen:
                    self.seen.add(key)
                    self._cover(config)
                    out.append(Proposal(self.slot, render(self.slot, config), self.origin, config))
                    break
            else:
                break
        return out

    def _cover(self, config: Mapping[str, int]) -> None:
        knob = COVER.get(self.slot)
        if knob:
            self.covered.add(int(config.get(knob, SPACE[self.slot][knob][0])))

    def _next(self, good: list[Candidate]) -> dict[str, int]:
        if self.start is not None and config_key(self.slot, self.start) not in self.seen:
            return dict(self.start)
        space = self.space
        knob = COVER.get(self.slot)
        untried = [v for v in space.get(knob, ()) if v not in self.covered]
        if knob and untried:
            return canonical(self.slot, {**builtin_config(self.slot), knob: untried[0]})
        if not good or self.rng.random() < self.explore:
            return canonical(self.slot, {k: self.rng.choice(v) for k, v in space.items()})
        if self.rng.random() < self.local:
            best = canonical(self.slot, good[0].config or {})
            steps = [canonical(self.slot, {**best, k: v}) for k in space for v in space[k]]
            untried = [c for c in steps if config_key(self.slot, c) not in self.seen]
            if untried:
                return self.rng.choice(untried)
        # Tournament among the best few, then crossover and mutation.
        parents = good[: max(2, min(5, len(good)))]
        a = dict(self.rng.choice(parents).config or {})
        if len(parents) > 1 and self.rng.random() < 0.5:
            b = self.rng.choice(parents).config or {}
            a = {k: (a.get(k) if self.rng.random() < 0.5 else b.get(k, a.get(k))) for k in space}
        for _ in range(1 + int(self.rng.random() < 0.4)):
            knob = self.rng.choice(list(space))
            a[knob] = self.rng.choice(space[knob])
        return canonical(self.slot, a)


def describe_config(slot: str, config: Mapping[str, Any]) -> str:
    """A short human summary of what a configuration changes from the built-in."""
    base = builtin_config(slot)

    def shown(k: str, v: int) -> Any:
        return (CODES[v] or "float32") if (slot, k) == ("layout", "EVX_CODES") else v

    c = canonical(slot, config)
    diff = [f"{k[4:].lower()}={shown(k, v)}" for k, v in c.items() if base[k] != v]
    return ", ".join(diff) if diff else "built-in"
