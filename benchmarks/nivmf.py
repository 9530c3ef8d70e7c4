"""Forward + backward time of the EL-nivMF ProxyNCA++ loss: closed form, vectorised Monte Carlo, and a
straightforward per-image Python loop of the same Monte Carlo computation (the official code's structure),
in the same process.

    python benchmarks/nivmf.py [--batch 112] [--classes 100] [--dim 128] [--samples 5] [--repeats 20]

Each row: median wall time of the loss value and its gradient w.r.t. the image embeddings, the proxy
directions and the proxy kappas (reference_linear nivMF, temperature inside the average as the official
code, T = 0.003), jitted (compilation excluded and reported separately), and the ratio to the closed form.
The loop row builds the [B, C] logit matrix one image at a time (5 samples of image i, its log-mean-exp
over all proxies), as `criteria/proxyvmf_panc.py` does; 'loop, eager' runs that loop op by op without jit.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from probdml import distributions, losses, similarity  # noqa: E402


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=112)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.003)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    b, c, p, n, t = args.batch, args.classes, args.dim, args.samples, args.temperature

    rng = np.random.default_rng(0)
    emb = jnp.asarray(rng.normal(size=(b, p)) * 30.0 / math.sqrt(p) * 4, jnp.float32)
    proxies = jnp.asarray(rng.normal(size=(c, p)), jnp.float32)
    kappas = jnp.full((c, p), 6.0, jnp.float32)
    labels = jnp.asarray(rng.integers(0, c, b), jnp.int32)
    key = jax.random.key(0)

    def closed(e, v, k):
        s = similarity.el_nivmf(similarity.l2_normalize(e), jnp.linalg.norm(e, axis=-1), similarity.l2_normalize(v),
                                k, temperature=t, temperature_placement="inside")
        return losses.proxy_nca_pp(s, labels, temperature=1.0)

    def monte_carlo(e, v, k):
        s = similarity.el_nivmf(similarity.l2_normalize(e), jnp.linalg.norm(e, axis=-1), similarity.l2_normalize(v),
                                k, estimator="monte_carlo", num_samples=n, temperature=t,
                                temperature_placement="inside", key=key)
        return losses.proxy_nca_pp(s, labels, temperature=1.0)

    def loop(e, v, k):
        mu_b = similarity.l2_normalize(v)
        rows = []
        for i in range(b):  # one image at a time, as the official criterion
            mu_i = e[i] / jnp.linalg.norm(e[i])
            x = distributions.vmf_sample(jax.random.fold_in(key, i), mu_i, jnp.linalg.norm(e[i]), (n,))  # [n, p]
            log_niv = similarity.nivmf_pairwise_log_prob(x, mu_b, k, form="reference_linear") / t  # [n, C]
            rows.append(jax.nn.logsumexp(log_niv, axis=0) - math.log(n))
        return losses.proxy_nca_pp(jnp.stack(rows), labels, temperature=1.0)

    print(f"EL-nivMF ProxyNCA++ forward+backward: batch {b}, {c} classes, dim {p}, {n} samples, T = {t}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    rows = []
    for name, fn in (("closed form", closed), (f"Monte Carlo, vectorised (n={n})", monte_carlo),
                     (f"Monte Carlo, per-image loop (n={n})", loop)):
        grad_fn = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
        t0 = time.perf_counter()
        jax.block_until_ready(grad_fn(emb, proxies, kappas))
        compile_s = time.perf_counter() - t0
        ms = _median_ms(lambda g=grad_fn: jax.block_until_ready(g(emb, proxies, kappas)), args.repeats)
        rows.append((name, ms, compile_s))
    eager = jax.value_and_grad(loop, argnums=(0, 1, 2))
    eager_ms = _median_ms(lambda: jax.block_until_ready(eager(emb, proxies, kappas)), max(1, args.repeats // 10))
    rows.append((f"Monte Carlo, per-image loop (n={n}), eager", eager_ms, 0.0))
    base = rows[0][1]
    print(f"{'implementation':45s} {'ms':>10s} {'x closed':>10s} {'compile s':>10s}")
    for name, ms, compile_s in rows:
        print(f"{name:45s} {ms:10.3f} {ms / base:10.1f} {compile_s:10.1f}")


if __name__ == "__main__":
    main()
