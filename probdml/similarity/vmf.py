"""Kernels between isotropic von Mises-Fisher distributions on S^{p-1} (documentation:
docs/methods/nivmf.md, "vMF kernels"; normalisers: docs/numerics.md).

vMF(x; mu, kappa) = C_p(kappa) exp(kappa mu.x), log C_p(k) = (p/2 - 1) log k - (p/2) log 2pi - log I_{p/2-1}(k).
For vMF_a = (mu_a, ka) and vMF_b = (mu_b, kb), with the resultant R = |ka mu_a + kb mu_b|, all in nats:

    log PPK_rho  = rho (log C_p(ka) + log C_p(kb)) - log C_p(rho R)     (rho = 1: expected likelihood,
                                                                        rho = 1/2: log Bhattacharyya)
    KL(a || b)   = log C_p(ka) - log C_p(kb) + A_p(ka) (ka - kb mu_b.mu_a),  A_p = I_{p/2} / I_{p/2-1}
    log-lik      = log vMF(mu_a; mu_b, kb) = log C_p(kb) + kb mu_b.mu_a

`normalizer` picks log C_p: 'exact' (probdml.special.log_vmf_normalizer, every p and kappa) or
'reference_quadratic' (the official EL-nivMF code's quadratic fit in kappa,
probdml.distributions.reference_log_normalizer).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from probdml import distributions, special
from probdml.similarity.basic import safe_sqrt

Array = jax.Array

NORMALIZERS = ("exact", "reference_quadratic")


def log_normalizer(normalizer: str) -> Callable[[Array, int], Array]:
    """The function (kappa, p) -> log C_p(kappa) that `normalizer` names (one of NORMALIZERS)."""
    if normalizer == "exact":
        return special.log_vmf_normalizer
    if normalizer == "reference_quadratic":
        return distributions.reference_log_normalizer
    raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")


def resultant(kappa_a: Array, kappa_b: Array, cos: Array) -> Array:
    """|kappa_a mu_a + kappa_b mu_b| = sqrt(ka^2 + kb^2 + 2 ka kb cos) for [N] x [M] -> [N, M]."""
    ka, kb = kappa_a[:, None], kappa_b[None, :]
    return safe_sqrt(ka * ka + kb * kb + 2.0 * ka * kb * cos)


def ppk(mu_a: Array, kappa_a: Array, mu_b: Array, kappa_b: Array, *, rho: float = 1.0,
        normalizer: str = "exact") -> Array:
    """log probability product kernel of order rho between vMF(mu_a_i, kappa_a_i) and vMF(mu_b_j, kappa_b_j):

    log int f_a^rho f_b^rho dx = rho (log C_p(ka) + log C_p(kb)) - log C_p(rho |ka mu_a + kb mu_b|)  [N, M].
    rho = 1: expected likelihood kernel (EL); rho = 1/2: log Bhattacharyya coefficient.
    """
    log_c = log_normalizer(normalizer)
    p = mu_a.shape[-1]
    r = resultant(kappa_a, kappa_b, mu_a @ mu_b.T)
    own = log_c(kappa_a, p)[:, None] + log_c(kappa_b, p)[None, :]
    return rho * own - log_c(rho * r, p)


def vmf_kl(mu_a: Array, kappa_a: Array, mu_b: Array, kappa_b: Array, *, normalizer: str = "exact",
           exact_mean_length: bool = True) -> Array:
    """KL(vMF(mu_a_i, ka_i) || vMF(mu_b_j, kb_j)) = log C_p(ka) - log C_p(kb) + A_p(ka) (ka - kb mu_b.mu_a) [N, M].

    `exact_mean_length=False` replaces A_p(ka) by 1, as the official EL-nivMF code does.
    """
    log_c = log_normalizer(normalizer)
    p = mu_a.shape[-1]
    mean_length = special.vmf_mean_resultant_length(kappa_a, p) if exact_mean_length else jnp.ones_like(kappa_a)
    cos = mu_a @ mu_b.T
    own = log_c(kappa_a, p) + mean_length * kappa_a
    return own[:, None] - log_c(kappa_b, p)[None, :] - mean_length[:, None] * kappa_b[None, :] * cos


def vmf_loglik(mu_a: Array, mu_b: Array, kappa_b: Array, *, normalizer: str = "exact") -> Array:
    """Point log-likelihood log vMF(mu_a_i; mu_b_j, kb_j) = log C_p(kb) + kb mu_b.mu_a  [N, M]."""
    log_c = log_normalizer(normalizer)
    return log_c(kappa_b, mu_a.shape[-1])[None, :] + kappa_b[None, :] * (mu_a @ mu_b.T)
