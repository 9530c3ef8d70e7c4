"""Self-supervised and label-free losses: two views of a batch (VICReg), or the batch with meta-class proxies
through a random walk (Manifold). They take embeddings or a similarity over batch and proxies, not labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from probdml.losses._common import check_labels, check_matrix, masked_log1p_sum_exp
from probdml.similarity import l2_normalize

Array = jax.Array


def vic_reg(
    embeddings: jnp.ndarray,
    ref_embeddings: jnp.ndarray,
    *,
    invariance_lambda: float = 25.0,
    variance_mu: float = 25.0,
    covariance_v: float = 1.0,
    eps: float = 1e-4,
) -> jnp.ndarray:
    """VICReg (Bardes et al., ICLR 2022), pytorch-metric-learning's VICRegLoss, for two views Z, Z' [N, D]:

    L = lambda mean_i |z_i - z'_i|^2 / D + mu mean_d ([1 - sqrt(Var z_d + eps)]_+ + [1 - sqrt(Var z'_d + eps)]_+) / 2
      + nu (sum_{d != e} C(Z)_de^2 + sum_{d != e} C(Z')_de^2) / D,
    with unbiased variances and covariances C over the batch.
    """
    check_matrix("vic_reg", "embeddings", embeddings, "[N, D] (samples x features)")
    check_matrix("vic_reg", "ref_embeddings", ref_embeddings, "[N, D] like embeddings", rows=embeddings.shape[0],
                 cols=embeddings.shape[1])
    n, d = embeddings.shape
    invariance = jnp.mean((embeddings - ref_embeddings) ** 2)

    def variance(z):
        return jnp.mean(jax.nn.relu(1.0 - jnp.sqrt(jnp.var(z, axis=0, ddof=1) + eps))) / 2.0

    def covariance(z):
        zc = z - jnp.mean(z, axis=0)
        cov = zc.T @ zc / (n - 1)
        off = cov * (1.0 - jnp.eye(d, dtype=cov.dtype))
        return jnp.sum(off * off) / d

    return (invariance_lambda * invariance + variance_mu * (variance(embeddings) + variance(ref_embeddings))
            + covariance_v * (covariance(embeddings) + covariance(ref_embeddings)))


def manifold(
    sim: jnp.ndarray,
    meta_classes: jnp.ndarray,
    *,
    num_proxies: int,
    lambda_c: float = 1.0,
    alpha: float = 0.8,
    margin: float = 5e-4,
) -> jnp.ndarray:
    """Manifold loss (Aziere & Todorovic, CVPR 2019), pytorch-metric-learning's ManifoldLoss:

    sim [N + K, N + K]: the cosine among the N embeddings followed by the K proxies; meta_classes [N] in
    [0, K): each sample's proxy. With W = e^{2 max(s, 0)} (zero diagonal), S = D^-1/2 W D^-1/2 (D its row
    sums) and the random-walk ranking F = (1 - alpha) (I - alpha S)^-1, rows F_e (samples), F_p (proxies):
    loss_int = mean_i log(1 + sum_{k != m_i, t_ik >= 0} e^{t_ik}), t_ik = F_e[i, N + k] - F_e[i, N + m_i] + margin;
    loss_ctx the same with t_ik = cos(F_e[i], F_p[k]) - cos(F_e[i], F_p[m_i]) + margin;
    L = loss_int + lambda_c loss_ctx (lambda_c = inf: loss_ctx alone, as pytorch-metric-learning documents;
    its code returns inf there). The meta-classes are an input here (PML draws them at random when none are
    given; the objective draws them from the step's key).
    """
    check_matrix("manifold", "sim", sim, "[N + K, N + K] (samples and proxies)")
    total, m = sim.shape
    if m != total or total <= num_proxies:
        raise ValueError(f"manifold: sim must be a square [N + K, N + K] matrix with K = {num_proxies}, "
                         f"got shape {sim.shape}")
    n = total - num_proxies
    check_labels("manifold", meta_classes, n, num_proxies)
    w = jnp.exp(jnp.maximum(sim, 0.0) / 0.5) * (1.0 - jnp.eye(total, dtype=sim.dtype))
    d_inv_half = jax.lax.rsqrt(jnp.sum(w, axis=1))
    s_bar = d_inv_half[:, None] * w * d_inv_half[None, :]
    f = (1.0 - alpha) * jnp.linalg.inv(jnp.eye(total, dtype=sim.dtype) - alpha * s_bar)
    own = jax.nn.one_hot(meta_classes, num_proxies, dtype=bool)

    def ranking_term(scores):
        t = scores - jnp.sum(jnp.where(own, scores, 0.0), axis=1, keepdims=True) + margin
        keep = ~own & (t >= 0)
        return jnp.mean(masked_log1p_sum_exp(t, keep, axis=1))

    f_e, f_p = f[:n], f[n:]
    loss_ctx = ranking_term(l2_normalize(f_e) @ l2_normalize(f_p).T)
    if lambda_c == float("inf"):
        return loss_ctx
    return ranking_term(f_e[:, n:]) + lambda_c * loss_ctx
