"""The official EL-nivMF code's vMF sampler, reproduced for `compat` (documentation: docs/methods/nivmf.md,
"compat"; why it is biased: docs/numerics.md). The exact sampler (probdml.distributions.vmf_sample)
stays the default everywhere else.

For vMF(mu, kappa) on S^{p-1}, with m = p - 1, the official sampler draws the cosine w = mu.x by Wood's
rejection scheme with a blended b:

    c = sqrt(4 kappa^2 + m^2),  b_true = (c - 2 kappa) / m,  b_app = m / (4 kappa)
    s = min(max(kappa - 10, 0), 1),  b = s b_app + (1 - s) b_true        (b_true below 10, b_app above 11)
    a = (m + 2 kappa + c) / 4,  d = 4 a b / (1 + b) - m log m             (a from the exact root, not from b)
    proposal   e ~ Beta(m/2, m/2),  u ~ U(1e-20, 1 - 1e-20)
               w = (1 - (1 + b) e) / (1 - (1 - b) e),  t = 2 a b / (1 - (1 - b) e)
    accept iff m log t - t + d > log u; one proposal per round, rounds repeated until every draw is accepted

(for p = 3: w = 1 + log(u + (1 - u) e^{-2 kappa}) / kappa, u ~ U(0, 1)). With b = b_true this is Wood's
exact sampler; with the blended b (kappa > 10) a and d no longer match b, the test accepts almost every
proposal and the accepted w is the Beta proposal mapped through b, so the samples are biased (mean cosine
0.37 instead of A_p = 0.44 at p = 128, kappa = 70). The point is

    x = H [w, sqrt(max(1 - w^2, 1e-7)) v],  v uniform on S^{p-2},
    H = I - 2 h h^T,  h = (e_1 - mu) / max(|e_1 - mu|, 1e-7)          (Householder, H e_1 = mu)

Gradients: e, u and v carry none; kappa reaches x only through b(kappa) (b_app, b_true and the slope of s
for 10 < kappa < 11), mu through H.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from probdml.distributions import _marsaglia_tsang
from probdml.similarity.basic import safe_sqrt

Array = jax.Array

_ROOT_EPS = 1e-7  # the official sampler's clamp of 1 - w^2 and of |e_1 - mu|
_UNIFORM_EPS = 1e-20


def official_wood_parameters(kappa: Array, dim: int) -> tuple[Array, Array, Array]:
    """(b, a, d) of the official sampler for concentrations `kappa` (any shape) on S^{dim-1}."""
    m = dim - 1.0
    c = jnp.sqrt(4.0 * kappa * kappa + m * m)
    b_true = (c - 2.0 * kappa) / m
    s = jnp.clip(kappa - 10.0, 0.0, 1.0)
    b_app = m / (4.0 * jnp.where(s > 0, kappa, 1.0))  # used only where s > 0 (kappa > 10)
    b = b_app * s + b_true * (1.0 - s)
    a = (m + 2.0 * kappa + c) / 4.0
    d = 4.0 * a * b / (1.0 + b) - m * math.log(m)
    return b, a, d


def official_accepts(e: Array, log_u: Array, b: Array, a: Array, d: Array, dim: int) -> Array:
    """The official acceptance test of a Beta proposal e with uniform u: m log t - t + d > log u,
    t = 2 a b / (1 - (1 - b) e), m = dim - 1."""
    t = 2.0 * a * b / (1.0 - (1.0 - b) * e)
    return (dim - 1.0) * jnp.log(t) - t + d > log_u


def _accepted_proposals(key: Array, b: Array, a: Array, d: Array, dim: int) -> Array:
    """Beta(m/2, m/2) proposals e, one per element of b, each the first to pass the official test.

    e = G1 / (G1 + G2) from two Gamma(m/2) draws by Marsaglia-Tsang (their own rejection steps are
    accepted jointly with the official test, so the kept e is Beta(m/2, m/2) conditioned on that test
    exactly; cheaper to compile than jax.random.beta). Under jax.vmap over keys the loop runs while any key
    has a pending draw and finished keys keep their state, so each key draws what it draws alone."""
    alpha = (dim - 1.0) / 2.0
    boost = alpha < 1.0

    def body(state):
        k, e, done = state
        k, k_z, k_u = jax.random.split(k, 3)
        z = jax.random.normal(k_z, (2,) + b.shape, b.dtype)
        log_u = jnp.log(jax.random.uniform(k_u, (5 if boost else 3,) + b.shape, b.dtype,
                                           _UNIFORM_EPS, 1.0 - _UNIFORM_EPS))
        log_g, gamma_ok = _marsaglia_tsang(z, log_u[:2], alpha + 1.0 if boost else alpha)
        if boost:
            log_g = log_g + log_u[3:] / alpha
        e_new = jax.nn.sigmoid(log_g[0] - log_g[1])
        accept = gamma_ok[0] & gamma_ok[1] & official_accepts(e_new, log_u[2], b, a, d, dim)
        return k, jnp.where(accept & ~done, e_new, e), done | accept

    state = (key, jnp.zeros_like(b), jnp.zeros(b.shape, bool))
    return jax.lax.while_loop(lambda s: ~jnp.all(s[2]), body, state)[1]


def official_vmf_cosines(key: Array, kappa: Array, dim: int) -> Array:
    """w = mu.x of the official sampler for each element of `kappa`, differentiable in kappa through b
    (p = 3: the inverse CDF, differentiable in kappa)."""
    if dim == 3:
        u = jax.random.uniform(key, kappa.shape, kappa.dtype)
        return 1.0 + jnp.logaddexp(jnp.log(u), jnp.log1p(-u) - 2.0 * kappa) / kappa
    b, a, d = official_wood_parameters(kappa, dim)
    fixed = jax.lax.stop_gradient
    e = fixed(_accepted_proposals(key, fixed(b), fixed(a), fixed(d), dim))
    return (1.0 - (1.0 + b) * e) / (1.0 - (1.0 - b) * e)


def official_vmf_sample(key: Array, mu: Array, kappa: Array, num_samples: int) -> Array:
    """num_samples draws of the official sampler from each vMF(mu_i, kappa_i), mu [N, p] unit, kappa [N]:
    [num_samples, N, p]. |x| exceeds 1 by up to 5e-8 where 1 - w^2 < 1e-7 (the official clamp)."""
    n, dim = mu.shape
    key_w, key_v = jax.random.split(key)
    w = official_vmf_cosines(key_w, jnp.broadcast_to(kappa, (num_samples, n)), dim)[..., None]
    v = jax.random.normal(key_v, (num_samples, n, dim - 1), mu.dtype)
    v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    x = jnp.concatenate([w, jnp.sqrt(jnp.maximum(1.0 - w * w, _ROOT_EPS)) * v], axis=-1)
    h = jnp.zeros_like(mu).at[:, 0].set(1.0) - mu
    # |h| by safe_sqrt: the value of the official norm, with a zero gradient at h = 0 (mu = e_1) as torch's
    # norm has; jnp.linalg.norm's is 0 * inf = NaN there.
    h = h / jnp.maximum(safe_sqrt(jnp.sum(h * h, axis=-1, keepdims=True)), _ROOT_EPS)
    return x - 2.0 * jnp.sum(x * h, axis=-1, keepdims=True) * h
