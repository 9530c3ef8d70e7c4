"""Forward + backward time of the EL-nivMF ProxyNCA++ loss: probdml's closed form, probdml's compat
Monte Carlo (the official estimator, vectorised and jitted), and a PyTorch reimplementation of the
official code's structure, written here (not the official code): a Python loop over the images, each
drawing its samples with a rejection `while` loop on the official sampler's blended b and evaluating its
logits against all proxies, as `criteria/proxyvmf_panc.py` with `utilities/vmf_sampler.py` does.

    python benchmarks/nivmf.py [--batch 112] [--classes 100] [--dim 128] [--samples 5] [--repeats 5]

Before timing, the PyTorch logits and probdml's compat logits are evaluated on the same samples (drawn
by probdml's official sampler) and must agree in float64 (loss to 1e-6 relative, gradients w.r.t. proxies
and kappas to 1e-5 of their largest entry); the timed runs are float32.
Each row: median wall time of the loss value and its gradient w.r.t. the image embeddings, the proxy
directions and the proxy kappas (T = 0.003 inside the average as the official code), compilation
excluded for JAX (reported separately), and the ratio to the closed form, all in one process pinned to
one CPU core (JAX and PyTorch both), so that machine load cancels in the ratios.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

if "--all-cores" not in sys.argv:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from probdml import losses, similarity  # noqa: E402


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _quadratic_log_c(norm: torch.Tensor, dim: int) -> torch.Tensor:
    """The official quadratic stand-in for log C_p (p = 128 fit, else the p = 512 fit)."""
    if dim == 128:
        return 127 - 0.01909 * norm - 0.003355 * norm ** 2
    return 868 - 0.0002662 * norm - 0.0009685 * norm ** 2


def torch_official_samples(mu: torch.Tensor, kappa: torch.Tensor, n: int) -> torch.Tensor:
    """n samples [n, p] of one image's vMF(mu, kappa) by the official scheme: Beta proposals accepted by
    the test with Wood's a, d and the blended b, looped until all n are accepted; gradient through b."""
    p = mu.shape[0]
    m = p - 1.0
    root = torch.sqrt(4 * kappa ** 2 + m ** 2)
    s = torch.clamp(kappa - 10.0, 0.0, 1.0)
    b = (m / (4 * kappa)) * s + (root - 2 * kappa) / m * (1 - s)
    a = (m + 2 * kappa + root) / 4
    d = 4 * a * b / (1 + b) - m * math.log(m)
    eps = torch.zeros(n, dtype=mu.dtype)
    pending = torch.ones(n, dtype=torch.bool)
    beta = torch.distributions.Beta(torch.tensor(m / 2, dtype=torch.float64), torch.tensor(m / 2, dtype=torch.float64))
    with torch.no_grad():
        while pending.any():
            e = beta.sample((n,)).to(mu.dtype)
            u = torch.rand(n, dtype=mu.dtype).clamp(1e-20, 1 - 1e-20)
            t = 2 * a * b / (1 - (1 - b) * e)
            take = pending & (m * torch.log(t) - t + d > torch.log(u))
            eps[take] = e[take]
            pending &= ~take
    w = (1 - (1 + b) * eps) / (1 - (1 - b) * eps)
    v = torch.randn(n, p - 1, dtype=mu.dtype)
    v = v / v.norm(dim=-1, keepdim=True)
    x = torch.cat([w[:, None], torch.sqrt(torch.clamp(1 - w ** 2, min=1e-7))[:, None] * v], dim=-1)
    h = -mu.clone()
    h[0] = h[0] + 1.0
    h = h / h.norm().clamp_min(1e-7)
    return x - 2 * (x @ h)[:, None] * h


def torch_official_row(x: torch.Tensor, proxy_dirs: torch.Tensor, kappas: torch.Tensor, temperature: float):
    """One image's logits [C] from its samples x [n, p]: log-mean-exp over samples of l_c(x) / T with
    l_c(x) = q(|w_c|) + |w_c| cos(x, w_c) + sum log kappas_c - log|w_c|, w_c = kappas_c * unit(proxy_c)."""
    w = torch.nn.functional.normalize(proxy_dirs, dim=-1) * kappas
    wn = w.norm(dim=-1)
    cos = torch.nn.functional.cosine_similarity(x[:, None, :], w[None], dim=-1)  # [n, C]
    logl = (_quadratic_log_c(wn, x.shape[-1]) + wn * cos + torch.log(kappas).sum(-1) - torch.log(wn)) / temperature
    return torch.logsumexp(logl, dim=0) - math.log(x.shape[0])


def torch_official_loss(e, proxy_dirs, kappas, labels, temperature, n, samples=None):
    """ProxyNCA++ over the per-image rows, one image at a time (the official structure)."""
    rows = []
    for i in range(e.shape[0]):
        kappa = e[i].norm()
        x = torch_official_samples(e[i] / kappa, kappa, n) if samples is None else samples[:, i]
        rows.append(torch_official_row(x, proxy_dirs, kappas, temperature))
    s = torch.stack(rows)
    return torch.mean(torch.logsumexp(s, dim=1) - s[torch.arange(e.shape[0]), labels])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=112)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.003)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--all-cores", action="store_true", help="do not pin the process to one core")
    args = parser.parse_args()
    b, c, p, n, t = args.batch, args.classes, args.dim, args.samples, args.temperature
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)

    rng = np.random.default_rng(0)
    emb_np = (rng.normal(size=(b, p)) * 30.0 / math.sqrt(p) * 4).astype(np.float32)
    proxies_np = rng.normal(size=(c, p)).astype(np.float32)
    kappas_np = np.full((c, p), 6.0, np.float32)
    labels_np = rng.integers(0, c, b)
    emb, proxies, kappas = jnp.asarray(emb_np), jnp.asarray(proxies_np), jnp.asarray(kappas_np)
    labels = jnp.asarray(labels_np, jnp.int32)
    key = jax.random.key(0)
    compat = similarity.get_similarity("el_nivmf", compat=True)

    def closed(e, v, k):
        s = similarity.el_nivmf(similarity.l2_normalize(e), jnp.linalg.norm(e, axis=-1), similarity.l2_normalize(v),
                                k, temperature=t, temperature_placement="inside")
        return losses.proxy_nca_pp(s, labels, temperature=1.0)

    def official_estimator(e, v, k):
        s = compat({"embedding": e}, {"embedding": v, "kappas": k}, key=key, temperature=t).similarity
        return losses.proxy_nca_pp(s, labels, temperature=1.0)

    # Same values first: probdml's compat logits and the PyTorch rows on the same samples, compared in float64
    # (in float32 both drift from their own float64 values by up to ~1e-2 of max|g| at 1/T = 333 and p = 512).
    x = jax.jit(lambda k, e: similarity.l2_normalize(similarity.official_vmf_sample(  # arguments, not constants:
        k, similarity.l2_normalize(e), jnp.linalg.norm(e, axis=-1), n)))(key, emb)  # no constant folding
    x_np = np.asarray(x, np.float64)
    with jax.enable_x64(True):
        ours_value, ours_grads = jax.value_and_grad(
            lambda v, k: losses.proxy_nca_pp(similarity.el_nivmf_monte_carlo(
                jnp.asarray(x_np), similarity.l2_normalize(v), k, temperature=t, normalizer="reference_quadratic"),
                labels, temperature=1.0),
            argnums=(0, 1))(jnp.asarray(proxies_np, jnp.float64), jnp.asarray(kappas_np, jnp.float64))
        ours_value, ours_grads = float(ours_value), [np.asarray(g) for g in ours_grads]
    tv = torch.tensor(proxies_np, dtype=torch.float64, requires_grad=True)
    tk = torch.tensor(kappas_np, dtype=torch.float64, requires_grad=True)
    theirs = torch_official_loss(torch.tensor(emb_np, dtype=torch.float64), tv, tk, torch.tensor(labels_np), t, n,
                                 samples=torch.tensor(x_np))
    theirs.backward()
    np.testing.assert_allclose(ours_value, theirs.item(), rtol=1e-6)
    gaps = []
    for ours, their in zip(ours_grads, (tv.grad.numpy(), tk.grad.numpy())):
        scale = float(np.max(np.abs(their)))
        np.testing.assert_allclose(ours, their, rtol=0, atol=1e-5 * scale)
        gaps.append(float(np.max(np.abs(ours - their))) / scale)
    print(f"same values on shared samples (float64): loss {ours_value:.6f} (probdml) vs {theirs.item():.6f} (PyTorch); "
          f"gradient gaps / max|g|: proxies {gaps[0]:.1e}, kappas {gaps[1]:.1e}")

    print(f"EL-nivMF ProxyNCA++ forward+backward: batch {b}, {c} classes, dim {p}, {n} samples, T = {t}; "
          f"jax {jax.__version__}, torch {torch.__version__}, {len(os.sched_getaffinity(0))} CPU core(s)")
    rows = []
    for name, fn in (("probdml closed form (exact EL, jit)", closed),
                     (f"probdml compat Monte Carlo (n={n}, jit)", official_estimator)):
        grad_fn = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
        t0 = time.perf_counter()
        jax.block_until_ready(grad_fn(emb, proxies, kappas))
        compile_s = time.perf_counter() - t0
        ms = _median_ms(lambda g=grad_fn: jax.block_until_ready(g(emb, proxies, kappas)), args.repeats)
        rows.append((name, ms, compile_s))

    te = torch.tensor(emb_np, requires_grad=True)
    tlabels = torch.tensor(labels_np)

    def torch_step():
        for tensor in (te, tv, tk):
            tensor.grad = None
        torch_official_loss(te, tv, tk, tlabels, t, n).backward()

    rows.append((f"PyTorch, official structure reimplemented (n={n})", _median_ms(torch_step, args.repeats), 0.0))
    base = rows[0][1]
    print(f"{'implementation':52s} {'ms':>10s} {'x closed':>10s} {'compile s':>10s}")
    for name, ms, compile_s in rows:
        print(f"{name:52s} {ms:10.3f} {ms / base:10.1f} {compile_s:10.1f}")


if __name__ == "__main__":
    main()
