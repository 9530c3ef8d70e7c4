"""Forward + backward time of the EL-nivMF ProxyNCA++ loss: closed form, vectorised Monte Carlo, and a
straightforward per-image Python loop of the same Monte Carlo computation (the official code's structure),
in the same process.

    python benchmarks/nivmf.py [--batch 112] [--classes 100] [--dim 128] [--samples 5] [--repeats 20]

Each row: median wall time of the loss value and its gradient w.r.t. the image embeddings, the proxy
directions and the proxy kappas (reference_linear nivMF, temperature inside the average as the official
code, T = 0.003), jitted (compilation excluded and reported separately), and the ratio to the closed form.
The loop row builds the [B, C] logit matrix one image at a time (5 samples of image i, its log-mean-exp
over all proxies), as `criteria/proxyvmf_panc.py` does: a jitted per-image function called in a Python loop
and differentiated through it (its 'compile s' is the first call, compilation plus one run).
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

    @jax.jit
    def image_row(e_i, mu_b, k, key_i):
        """One image's logits against all proxies: log-mean-exp over its n samples of l_c(x_s) / T."""
        x = distributions.vmf_sample(key_i, e_i / jnp.linalg.norm(e_i), jnp.linalg.norm(e_i), (n,))  # [n, p]
        log_niv = similarity.nivmf_pairwise_log_prob(x, mu_b, k, form="reference_linear") / t  # [n, C]
        return jax.nn.logsumexp(log_niv, axis=0) - math.log(n)

    def loop(e, v, k):
        mu_b = similarity.l2_normalize(v)
        rows = [image_row(e[i], mu_b, k, jax.random.fold_in(key, i)) for i in range(b)]  # as the official criterion
        return losses.proxy_nca_pp(jnp.stack(rows), labels, temperature=1.0)

    print(f"EL-nivMF ProxyNCA++ forward+backward: batch {b}, {c} classes, dim {p}, {n} samples, T = {t}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    rows = []
    for name, fn in (("closed form", closed), (f"Monte Carlo, vectorised (n={n})", monte_carlo)):
        grad_fn = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
        t0 = time.perf_counter()
        jax.block_until_ready(grad_fn(emb, proxies, kappas))
        compile_s = time.perf_counter() - t0
        ms = _median_ms(lambda g=grad_fn: jax.block_until_ready(g(emb, proxies, kappas)), args.repeats)
        rows.append((name, ms, compile_s))
    # The loop: a Python loop over images of a jitted per-image function, differentiated by jax.grad
    # through the loop (compiling the unrolled loop as one program takes minutes).
    loop_grad = jax.value_and_grad(loop, argnums=(0, 1, 2))
    t0 = time.perf_counter()
    jax.block_until_ready(loop_grad(emb, proxies, kappas))
    compile_s = time.perf_counter() - t0
    ms = _median_ms(lambda: jax.block_until_ready(loop_grad(emb, proxies, kappas)), max(1, args.repeats // 2))
    rows.append((f"Monte Carlo, per-image Python loop (n={n})", ms, compile_s))
    base = rows[0][1]
    print(f"{'implementation':45s} {'ms':>10s} {'x closed':>10s} {'compile s':>10s}")
    for name, ms, compile_s in rows:
        print(f"{name:45s} {ms:10.3f} {ms / base:10.1f} {compile_s:10.1f}")


if __name__ == "__main__":
    main()
