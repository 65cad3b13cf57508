"""``lbcore bench``: the balancers' quality table (Markdown) and plots (PNG).

For each number of backends N, every algorithm (and ``uhashring``, the peer) is measured on the
same keys: keys per backend (imbalance, max/mean), the keys that move when the last backend goes
(next to the minimum, 1/N) and the cost of building the structure.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lbcore.cli.balancer_quality import (
    PEER,
    QualityRow,
    backend_names,
    builder,
    loads,
    measure,
    sample_keys,
)
from lbcore.core import balancers

DEFAULT_SIZES = (3, 10, 100, 1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lbcore bench``."""
    parser.add_argument("--out", default="bench-out", metavar="DIR",
                        help="directory for quality.md and the PNG plots (default: ./bench-out)")
    parser.add_argument("--keys", type=int, default=200_000, metavar="COUNT",
                        help="keys per measure (default: 200000)")
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), metavar="N,N,...",
                        help="numbers of backends (default: 3,10,100,1000)")
    parser.add_argument("--algorithms", default="", metavar="NAME,...",
                        help="algorithms to measure (default: every built-in one)")
    parser.add_argument("--no-peer", action="store_true", help=f"leave {PEER} out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the key set (default: 0)")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--sizes: {text!r} is not a list of integers") from None
    if not sizes or min(sizes) < 2:
        raise ValueError(f"--sizes: every N must be >= 2, got {text!r}")
    return sizes


def _algorithms(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()] or balancers.builtin()
    unknown = [x for x in names if x not in balancers.builtin()]
    if unknown:
        raise ValueError(
            f"--algorithms: unknown {', '.join(unknown)}; available: {', '.join(balancers.builtin())}"
        )
    return names


def quality_rows(
    sizes: Sequence[int], algorithms: Sequence[str], keys_count: int, *, peer: bool = True,
    seed: int = 0,
) -> list[QualityRow]:
    """One row per (algorithm, N), the peer last in each N."""
    keys = sample_keys(keys_count, seed)
    names = [*algorithms, *([PEER] if peer else [])]
    return [measure(name, n, keys) for n in sizes for name in names]


def _fmt_seconds(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} µs"


def _fmt_bytes(b: int) -> str:
    return f"{b / 1024:.1f} KiB" if b < 1 << 20 else f"{b / (1 << 20):.1f} MiB"


def quality_markdown(rows: Sequence[QualityRow], keys_count: int) -> str:
    """The quality table as Markdown."""
    lines = [
        f"Keys: {keys_count:,} random uint64 keys. Imbalance: max/mean keys per backend. "
        "Moved: fraction of the keys that change backend when the last of N backends goes "
        "(the minimum is 1/N). Between survivors: moved from one remaining backend to another.",
        "",
        "| N | algorithm | imbalance | moved | minimum 1/N | between survivors | build | memory |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d = r.disruption
        moved = f"{d.moved:.4f}" if d else "n/a"
        ideal = f"{d.ideal:.4f}" if d else "n/a"
        between = f"{d.between_survivors:.4f}" if d else "n/a"
        lines.append(
            f"| {r.n} | {r.algorithm} | {r.imbalance:.3f} | {moved} | {ideal} | {between} "
            f"| {_fmt_seconds(r.build_seconds)} | {_fmt_bytes(r.nbytes)} |"
        )
    return "\n".join(lines) + "\n"


def plot_loads(path: Path, algorithms: Sequence[str], n: int, keys_count: int, *, peer: bool,
               seed: int = 0) -> None:
    """Keys per backend (as a multiple of the mean) for each algorithm, N backends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sample_keys(keys_count, seed)
    names = [*algorithms, *([PEER] if peer else [])]
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), sharey=True, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        counts = loads(builder(name)(backend_names(n)), keys)
        ax.bar(range(n), counts / counts.mean(), color="tab:orange" if name == PEER else "tab:blue")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylim(0.6, max(1.4, float(counts.max() / counts.mean()) + 0.05))
        ax.set_title(f"{name} (max/mean {counts.max() / counts.mean():.3f})", fontsize=9)
        ax.set_xticks([])
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"Keys per backend / mean, N = {n}, {keys_count:,} keys")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_disruption(path: Path, rows: Sequence[QualityRow]) -> None:
    """Moved keys over the minimum (1/N) against N, one line per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    by_name: dict[str, list[QualityRow]] = {}
    for r in rows:
        by_name.setdefault(r.algorithm, []).append(r)
    for name, rs in by_name.items():
        style = {"linestyle": "--", "color": "black"} if name == PEER else {}
        ns = [r.n for r in rs]
        right.plot(ns, [r.imbalance for r in rs], marker="o", label=name, **style)
        moved = [(r.n, r.disruption.excess) for r in rs if r.disruption]
        if moved:
            left.plot([m[0] for m in moved], [m[1] for m in moved], marker="o", label=name, **style)
    left.axhline(1.0, color="black", linewidth=0.8)
    left.set(xscale="log", xlabel="N backends", ylabel="moved / (1/N)",
             title="Disruption when one backend goes")
    right.set(xscale="log", xlabel="N backends", ylabel="max / mean keys",
              title="Imbalance")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lbcore bench``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="lbcore bench",
        description="Measure every balancing algorithm against uhashring: imbalance, disruption "
        "when a backend goes, build cost; write quality.md and PNG plots.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run with parsed arguments (the CLI's subcommand calls this)."""
    try:
        sizes = _sizes(args.sizes)
        algorithms = _algorithms(args.algorithms)
        if args.keys < 1000:
            raise ValueError(f"--keys: at least 1000 keys, got {args.keys}")
    except ValueError as exc:
        print(f"lbcore bench: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    peer = not args.no_peer
    start = time.perf_counter()
    rows = quality_rows(sizes, algorithms, args.keys, peer=peer, seed=args.seed)
    table = quality_markdown(rows, args.keys)
    header = (
        f"# Balancer quality\n\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, `lbcore bench --keys {args.keys} --sizes {args.sizes}`\n\n"
    )
    (out / "quality.md").write_text(header + table)
    plot_loads(out / "balancer-loads.png", algorithms, 10 if 10 in sizes else sizes[0], args.keys,
               peer=peer, seed=args.seed)
    plot_disruption(out / "balancer-disruption.png", rows)
    print(table)
    print(f"wrote {out / 'quality.md'}, {out / 'balancer-loads.png'}, "
          f"{out / 'balancer-disruption.png'} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
