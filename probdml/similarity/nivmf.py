"""Kernels between image vMFs and non-isotropic vMF (nivMF) class proxies (documentation:
docs/methods/nivmf.md).

A proxy c is nivMF(mu_c, K_c = diag(kappas_c)) on S^{p-1}; with w_c = K_c mu_c and
log det K_c = sum log kappas_c, its log density at x takes one of three forms (`form`):

    exact             log C_p(|w|) + w.(Kx)/|Kx| + log det K - p log|Kx|    (normalised on the sphere)
    stretched         log C_p(|w|) + w.(Kx)/|Kx| + log det K - log|w|       (official point loss)
    reference_linear  a_c + w_c.x,  a_c = log C_p(|w_c|) + log det K_c - log|w_c|   (official EL-nivMF)

The reference_linear proxy is exp(a_c) / C_p(|w_c|) times vMF(w_c/|w_c|, |w_c|), so its kernels against
an image vMF(mu_a, ka) have closed forms (nats):

    log PPK_rho = rho (log C_p(ka) + a_c) - log C_p(rho |ka mu_a + w_c|)
    -KL(vMF_a || nivMF_c) = H(vMF_a) + a_c + A_p(ka) mu_a.w_c,  H = -log C_p(ka) - ka A_p(ka)

For the other forms the same kernels are Monte-Carlo averages over x_s ~ vMF(mu_a, ka):

    log PPK_rho ~ log (1/n) sum_s exp((rho - 1) log vMF_a(x_s) + rho log nivMF_c(x_s))
    -KL         ~ H(vMF_a) + (1/n) sum_s log nivMF_c(x_s)

The expected likelihood kernel (rho = 1) with its temperature options is probdml.similarity.el_nivmf.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from probdml import distributions, special
from probdml.similarity.basic import EPS, l2_normalize
from probdml.similarity.vmf import log_normalizer, resultant

Array = jax.Array

NIVMF_FORMS = distributions.NIVMF_FORMS
KAPPA_GRADIENTS = distributions.KAPPA_GRADIENTS


def nivmf_constants(mu_b: Array, kappas_b: Array, normalizer: str) -> tuple[Array, Array, Array]:
    """w = K mu [M, D], |w| [M] (clamped at 1e-12) and log C_p(|w|) + log det K [M]."""
    w = kappas_b * mu_b
    w_norm = jnp.sqrt(jnp.maximum(jnp.sum(w * w, axis=-1), EPS * EPS))
    log_c = log_normalizer(normalizer)
    return w, w_norm, log_c(w_norm, mu_b.shape[-1]) + jnp.sum(jnp.log(kappas_b), axis=-1)


def nivmf_pairwise_log_prob(x: Array, mu_b: Array, kappas_b: Array, *, form: str = "exact",
                            normalizer: str = "exact") -> Array:
    """log nivMF(x; mu_b_j, diag(kappas_b_j)) for points x [..., N, D] and M proxies -> [..., N, M].

    The forms of probdml.distributions.nivmf_log_prob, evaluated with matrix products
    (w.Kx = x . (kappas^2 mu), |Kx|^2 = x^2 . kappas^2) instead of an [..., N, M, D] broadcast.
    """
    if form not in NIVMF_FORMS:
        raise ValueError(f"form must be one of {NIVMF_FORMS}, got {form!r}")
    w, w_norm, const = nivmf_constants(mu_b, kappas_b, normalizer)
    if form == "reference_linear":
        return const - jnp.log(w_norm) + x @ w.T
    sq = kappas_b * kappas_b
    kx_norm = jnp.sqrt(jnp.maximum((x * x) @ sq.T, EPS * EPS))
    aligned = (x @ (sq * mu_b).T) / kx_norm
    if form == "stretched":
        return const - jnp.log(w_norm) + aligned
    return const + aligned - mu_b.shape[-1] * jnp.log(kx_norm)


def nivmf_natural_parameters(mu_b: Array, kappas_b: Array, normalizer: str = "exact") -> tuple[Array, Array]:
    """(w [M, D], a [M]) with w_c = K_c mu_c and a_c = log C_p(|w_c|) + log det K_c - log|w_c|: the
    reference_linear log density is a_c + w_c.x."""
    w, w_norm, const = nivmf_constants(mu_b, kappas_b, normalizer)
    return w, const - jnp.log(w_norm)


def vmf_samples(key: Array, mu_a: Array, kappa_a: Array, num_samples: int, kappa_gradient: str = "implicit") -> Array:
    """num_samples reparameterised draws from each vMF(mu_a_i, kappa_a_i): [num_samples, N, D]
    (probdml.distributions.vmf_sample; `kappa_gradient` 'implicit' is exact, 'proposal' the official path)."""
    return distributions.vmf_sample(key, mu_a, kappa_a, (num_samples,), kappa_gradient=kappa_gradient)


def nivmf_ppk(mu_a: Array, kappa_a: Array, mu_b: Array, kappas_b: Array, *, rho: float = 0.5,
              normalizer: str = "exact") -> Array:
    """log PPK_rho between image vMFs and reference_linear nivMF proxies, exactly:
    rho (log C_p(ka) + a_c) - log C_p(rho |ka mu_a + w_c|). [N, M], nats."""
    w, a = nivmf_natural_parameters(mu_b, kappas_b, normalizer)
    p = mu_a.shape[-1]
    w_norm = jnp.sqrt(jnp.sum(w * w, axis=-1))
    r = resultant(kappa_a, w_norm, mu_a @ l2_normalize(w).T)
    return rho * (special.log_vmf_normalizer(kappa_a, p)[:, None] + a[None, :]) \
        - special.log_vmf_normalizer(rho * r, p)


def nivmf_ppk_monte_carlo(samples: Array, mu_a: Array, kappa_a: Array, mu_b: Array, kappas_b: Array, *,
                          rho: float = 0.5, form: str = "exact", normalizer: str = "exact") -> Array:
    """log PPK_rho by Monte Carlo: log (1/n) sum_s exp((rho - 1) log vMF_i(x_s) + rho log nivMF_c(x_s)),
    x_s ~ vMF(mu_a_i, ka_i) given as `samples` [n, N, D] (shared by all proxies). [N, M]."""
    p = mu_a.shape[-1]
    log_niv = nivmf_pairwise_log_prob(samples, mu_b, kappas_b, form=form, normalizer=normalizer)
    log_vmf = special.log_vmf_normalizer(kappa_a, p) + kappa_a * jnp.sum(samples * mu_a, axis=-1)  # [n, N]
    logits = rho * log_niv + (rho - 1.0) * log_vmf[..., None]
    return jax.nn.logsumexp(logits, axis=0) - math.log(samples.shape[0])


def nivmf_neg_kl(mu_a: Array, kappa_a: Array, mu_b: Array, kappas_b: Array, *, normalizer: str = "exact") -> Array:
    """-KL(vMF(mu_a_i, ka_i) || nivMF_c) for reference_linear proxies, exactly:
    H(vMF(ka_i)) + a_c + A_p(ka_i) mu_a_i.w_c. [N, M], nats."""
    w, a = nivmf_natural_parameters(mu_b, kappas_b, normalizer)
    p = mu_a.shape[-1]
    mean = special.vmf_mean_resultant_length(kappa_a, p)[:, None] * mu_a
    return distributions.vmf_entropy(kappa_a, p)[:, None] + a[None, :] + mean @ w.T


def nivmf_neg_kl_monte_carlo(samples: Array, mu_a: Array, kappa_a: Array, mu_b: Array, kappas_b: Array, *,
                             form: str = "exact", normalizer: str = "exact") -> Array:
    """-KL(vMF || nivMF_c) = H(vMF(ka_i)) + E_{x ~ vMF}[log nivMF_c(x)], the expectation over `samples`."""
    log_niv = nivmf_pairwise_log_prob(samples, mu_b, kappas_b, form=form, normalizer=normalizer)
    return distributions.vmf_entropy(kappa_a, mu_a.shape[-1])[:, None] + jnp.mean(log_niv, axis=0)
