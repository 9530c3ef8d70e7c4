"""Retrieval evaluation at SOP scale: probdml's exact blocked JAX kNN vs faiss-cpu IndexFlatIP.

Synthetic clustered embeddings with SOP-like class sizes (2..12 per class, mean ~5.35 like the
SOP test split: 60,502 images, 11,316 classes), L2-normalised, dim 512. Both methods compute
recall@{1,10,100} and MAP@R by leave-one-out cosine retrieval (k = 100 neighbours; MAP@R needs
the largest class size - 1 = 11). Each method runs in its own child process so that its peak
resident memory (ru_maxrss), wall time and CPU time (all threads) are its own; both run in the
same invocation, so their ratio is meaningful on a shared machine (the CPU-time ratio is the
less load-sensitive one). faiss is searched with k + 1 and its self-match dropped by index;
both neighbour lists go through the same `metrics_from_neighbors`. With --kmeans, k-means
(k = number of classes, at most 20 iterations, both stopping at convergence) + NMI/AMI/F1 are
timed against faiss.Kmeans. With --breakdown, where probdml's time goes: the symmetric score tiles alone
(the matrix products and transposes, nothing merged) and the cost of one top-k merge early and late in a row block's
sweep (one thread, real thresholds).

    python benchmarks/retrieval.py                 # full size (N = 60,502)
    python benchmarks/retrieval.py --n 8000        # quick
    python benchmarks/retrieval.py --kmeans        # also time k-means (NMI) vs faiss.Kmeans
    python benchmarks/retrieval.py --breakdown     # also time the tiles alone and single merges
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KS = (1, 10, 100)


def sop_like_sizes(n: int, rng: np.random.Generator, mean: float = 60502 / 11316) -> np.ndarray:
    """Class sizes in 2..12 summing to n, truncated-geometric with the given mean."""
    support = np.arange(2, 13)
    lo, hi = 1e-3, 10.0  # ratio r of p(s) ~ r^(s-2); bisect for the mean
    for _ in range(100):
        r = (lo + hi) / 2
        p = r ** (support - 2.0)
        lo, hi = (r, hi) if (p @ support) / p.sum() < mean else (lo, r)
    p /= p.sum()
    sizes = rng.choice(support, size=int(round(n / mean)), p=p)
    while sizes.sum() != n:
        j = rng.integers(len(sizes))
        step = 1 if sizes.sum() < n else -1
        if 2 <= sizes[j] + step <= 12:
            sizes[j] += step
    return sizes


def make_data(n: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random class centres: normalize(c_y + noise * g / sqrt(dim))."""
    rng = np.random.default_rng(seed)
    sizes = sop_like_sizes(n, rng)
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    centres = rng.standard_normal((len(sizes), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 8192):
        chunk = centres[labels[s : s + 8192]]
        chunk += (noise / np.sqrt(dim)) * rng.standard_normal(chunk.shape, dtype=np.float32)
        x[s : s + 8192] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return x, labels


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (less sensitive to other load)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_probdml(path: str, k: int, block_size: int, ref_block_size: int) -> dict:
    from probdml import metrics

    data = np.load(path)
    x, y = data["x"], data["y"]
    base = peak_rss_mb()
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    _, idx = metrics.knn(x, None, k, metric="cosine", block_size=block_size, ref_block_size=ref_block_size)
    out = metrics.metrics_from_neighbors(y[idx], y, ks=KS, include=("recall", "map@r"))
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "cpu": cpu_seconds() - c0,
        "base_rss": base,
        "peak_rss": peak_rss_mb(),
        "metrics": out,
        "idx": idx,
    }


def run_breakdown(path: str, k: int, block: int) -> dict:
    """The leave-one-out search's parts, as `neighbors._symmetric_knn` runs them: every tile S_ij (i <= j) of
    the symmetric score matrix computed and discarded (wall and CPU seconds), and the time of merging block
    0's row tiles into its running top-k one at a time (ms per merge, in sweep order)."""
    import jax

    from probdml.metrics import neighbors

    x = np.load(path)["x"]
    n = len(x)
    t = -(-n // block)
    prepare = jax.jit(lambda a: neighbors._prepare("cosine", a))
    blocks = [prepare(neighbors._pad_rows(x, b * block, block)) for b in range(t)]
    starts = [np.int32(b * block) for b in range(t)]
    precision = jax.lax.Precision.HIGHEST

    def tile(i, j):
        return neighbors._tile_scores_fn("cosine", precision, i == j, t * block > n and j == t - 1)(
            blocks[i], blocks[j], starts[i], starts[j], np.int32(n))

    for i, j in ((0, 0), (0, t - 1), (0, 1)):  # compile every variant before timing
        jax.block_until_ready(tile(i, j))
    c0, t0 = cpu_seconds(), time.perf_counter()
    last = None
    for i in range(t):
        for j in range(i, t):
            last = tile(i, j)
    jax.block_until_ready(last)
    tiles_wall, tiles_cpu = time.perf_counter() - t0, cpu_seconds() - c0

    merge = neighbors._merge_executable(k, block, "float32", bool(jax.config.jax_enable_x64))  # the search's own
    run = (np.full((block, k), -np.inf, np.float32), np.full((block, k), -1, np.int32))

    def row_tile(j):  # off the diagonal a tile comes with its transpose (for the column merge)
        return jax.block_until_ready(tile(0, j) if j == 0 else tile(0, j)[0])

    per_merge = []
    for j in range(t):
        s = row_tile(j)
        t0 = time.perf_counter()
        run = jax.block_until_ready(merge(*run, s, starts[j]))
        per_merge.append(time.perf_counter() - t0)
    return {"tiles": t * (t + 1) // 2, "tiles_wall": tiles_wall, "tiles_cpu": tiles_cpu,
            "merges_ms": 1e3 * np.asarray(per_merge)}


def run_faiss(path: str, k: int) -> dict:
    import faiss

    from probdml import metrics

    data = np.load(path)
    x, y = data["x"], data["y"]
    base = peak_rss_mb()
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, idx = index.search(x, k + 1)
    is_self = idx == np.arange(len(x))[:, None]
    is_self[~is_self.any(axis=1), -1] = True  # no self in the list: drop the last (PML's rule)
    idx = idx[~is_self].reshape(len(x), k)
    out = metrics.metrics_from_neighbors(y[idx], y, ks=KS, include=("recall", "map@r"))
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "cpu": cpu_seconds() - c0,
        "base_rss": base,
        "peak_rss": peak_rss_mb(),
        "metrics": out,
        "idx": idx,
    }


def run_probdml_kmeans(path: str, seed: int) -> dict:
    from probdml import metrics

    data = np.load(path)
    x, y = data["x"], data["y"]
    base = peak_rss_mb()
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    out = metrics.clustering_metrics(x, y, metric="euclidean", seed=seed, max_iter=20)
    wall = time.perf_counter() - t0
    return {"wall": wall, "cpu": cpu_seconds() - c0, "base_rss": base, "peak_rss": peak_rss_mb(), "metrics": out}


def run_faiss_kmeans(path: str, seed: int) -> dict:
    import faiss

    from probdml import metrics

    data = np.load(path)
    x, y = data["x"], data["y"]
    base = peak_rss_mb()
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    n_clusters = len(np.unique(y))
    km = faiss.Kmeans(x.shape[1], n_clusters, niter=20, seed=seed, max_points_per_centroid=10**9)
    km.train(x)
    _, assign = km.index.search(x, 1)
    out = metrics.clustering_metrics(x, y, cluster_labels=assign[:, 0])
    wall = time.perf_counter() - t0
    return {"wall": wall, "cpu": cpu_seconds() - c0, "base_rss": base, "peak_rss": peak_rss_mb(), "metrics": out}


def in_child(fn, *args) -> dict:
    """Run fn(*args) in a fresh spawned process (own peak RSS) and return its result."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def report(name: str, r: dict) -> None:
    vals = "  ".join(f"{key}={v:.4f}" for key, v in r["metrics"].items())
    print(
        f"{name:<17} wall {r['wall']:8.2f} s  cpu {r['cpu']:8.2f} s  peak RSS {r['peak_rss']:7.0f} MB"
        f" (after loading data {r['base_rss']:6.0f} MB)   {vals}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60502, help="queries = references")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--noise", type=float, default=2.2, help="within-class noise norm relative to the centre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--ref-block-size", type=int, default=65536)
    parser.add_argument("--kmeans", action="store_true", help="also time k-means + NMI/F1 vs faiss.Kmeans")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time probdml's symmetric tiles alone and single top-k merges")
    args = parser.parse_args()
    if args.breakdown and args.n <= args.block_size:
        parser.error(f"--breakdown needs at least two blocks: --n ({args.n}) above --block-size ({args.block_size})")

    x, y = make_data(args.n, args.dim, args.noise, args.seed)
    sizes = np.bincount(y)
    print(
        f"data: N={args.n} dim={args.dim} classes={len(sizes)} sizes {sizes.min()}..{sizes.max()}"
        f" (mean {sizes.mean():.2f}); k={args.k}; cpus={os.cpu_count()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        np.savez(path, x=x, y=y)
        del x
        ours = in_child(run_probdml, path, args.k, args.block_size, args.ref_block_size)
        report("probdml (JAX)", ours)
        ref = in_child(run_faiss, path, args.k)
        report("faiss IndexFlatIP", ref)
        same_rows = np.mean(np.all(ours["idx"] == ref["idx"], axis=1))
        same_first = np.mean(ours["idx"][:, 0] == ref["idx"][:, 0])
        print(f"identical neighbour lists: {same_rows:.4%} of queries (first neighbour: {same_first:.4%})")
        print(
            f"time ratio probdml / faiss = {ours['wall'] / ref['wall']:.2f} wall,"
            f" {ours['cpu'] / ref['cpu']:.2f} cpu (issue 21 target: <= 1.0);"
            f" probdml peak RSS {ours['peak_rss'] / 1024:.2f} GB (target < 1 GB)"
        )
        if args.breakdown:
            parts = in_child(run_breakdown, path, args.k, args.block_size)
            ms = parts["merges_ms"]
            print(
                f"probdml parts: the {parts['tiles']} symmetric tiles alone (products and transposes, nothing merged)"
                f" wall {parts['tiles_wall']:.2f} s, cpu {parts['tiles_cpu']:.2f} s ({parts['tiles_wall'] / ours['wall']:.0%}"
                f" of the search's wall time); one merge of a {args.block_size} x {args.block_size} tile into a"
                f" running top-{args.k}, one thread: {ms[0]:.1f} ms into the empty list, {np.mean(ms[1:4]):.1f} ms"
                f" for the next three, {np.mean(ms[-10:]):.1f} ms for the last ten ({len(ms)} in block 0's row sweep)"
            )
        if args.kmeans:
            km_ours = in_child(run_probdml_kmeans, path, args.seed)
            report("probdml k-means", km_ours)
            km_ref = in_child(run_faiss_kmeans, path, args.seed)
            report("faiss Kmeans", km_ref)
            print(
                f"k-means time ratio probdml / faiss = {km_ours['wall'] / km_ref['wall']:.2f} wall,"
                f" {km_ours['cpu'] / km_ref['cpu']:.2f} cpu"
            )


if __name__ == "__main__":
    main()
