"""The introspective similarity metric of IDML (documentation: docs/methods/idml.md).

Each embedding carries a semantic part x and an uncertainty part u. For a pair (i, j) with cosine
distance c = 1 - cos(x_i, y_j):

    semantic distance   alpha = c, 2c = |x^ - y^|^2 or sqrt(2c) = |x^ - y^|    (`alpha_mode`)
    uncertainty         beta  = |u_i + v_j|^2 (sumvec), |u_i|^2 + |v_j|^2 (sum) or |u_i - v_j|^2 (diff),
                                plus `beta_offset`; certain references (class proxies) have v = 0
    decay               r = beta / (tau max(alpha', eps)) (relative) or beta / tau (absolute)
    distance            D_IN = alpha e^{-r}, 0 < D_IN <= alpha, D_IN = alpha iff beta = 0
    similarity          s_IN = the cosine whose alpha equals D_IN: 1 - c e^{-r} (1 - c e^{-2r} for the
                        Euclidean alpha), so s_IN = cos at zero uncertainty.

alpha' (the distance in the exponent) is alpha itself except in the official code's
`compat_raw_proxy` mode, where it is |x^ - y|^2 with the proxy y left unnormalised.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from probdml.similarity.basic import EPS, Pairwise, cosine, l2_normalize, safe_sqrt, sq_euclidean

Array = jax.Array

ALPHA_MODES = ("cos", "sqeuclid_norm", "euclid_norm", "compat_raw_proxy")
BETA_FORMS = ("sumvec", "sum", "diff")
ISM_FORMS = ("relative", "absolute")

# The official IDML retrieval code's configuration: u / sqrt(|u|^2 + 1e-12), beta + 4, the raw-proxy
# exponent and tau = 5 (docs/methods/idml.md, "compatibility preset").
ISM_COMPAT_PRESET = {"uncertainty_l2norm": True, "beta_offset": 4.0, "alpha_mode": "compat_raw_proxy", "tau": 5.0}


def ism_decay(
    beta: jnp.ndarray,
    alpha_exponent: jnp.ndarray,
    *,
    tau: float = 5.0,
    ism_form: str = "relative",
    alpha_eps: float = 1e-6,
) -> jnp.ndarray:
    """The ISM's shrink factor e^{-r}: r = beta / (tau max(alpha', eps)) (relative) or beta / tau (absolute)."""
    if ism_form not in ISM_FORMS:
        raise ValueError(f"ism_form must be one of {ISM_FORMS}, got {ism_form!r}")
    if ism_form == "absolute":
        return jnp.exp(-beta / tau)
    return jnp.exp(-beta / (tau * jnp.maximum(alpha_exponent, alpha_eps)))


def introspective_distance(
    alpha: jnp.ndarray,
    beta: jnp.ndarray,
    *,
    tau: float = 5.0,
    ism_form: str = "relative",
    alpha_exponent: jnp.ndarray | None = None,
    alpha_eps: float = 1e-6,
) -> jnp.ndarray:
    """Introspective distance D_IN from a semantic distance alpha >= 0 and an uncertainty beta >= 0.

    relative (the authors' figure and code): D_IN = alpha exp(-beta / (tau max(alpha', eps)))
    absolute (the paper's text):             D_IN = alpha exp(-beta / tau)
    alpha' = `alpha_exponent` if given (the official code's raw-proxy distance), else alpha.
    0 < D_IN <= alpha, D_IN = alpha iff beta = 0; dD/dalpha = (1 + r) e^{-r} with r = beta / (tau alpha)
    (relative). The clamp alpha' >= `alpha_eps` keeps D_IN and its gradients finite as alpha -> 0.
    """
    exponent = alpha if alpha_exponent is None else alpha_exponent
    return alpha * ism_decay(beta, exponent, tau=tau, ism_form=ism_form, alpha_eps=alpha_eps)


def introspective_beta(
    u: jnp.ndarray, v: jnp.ndarray | None, *, beta_form: str = "sumvec"
) -> jnp.ndarray:
    """Pairwise uncertainty beta_ij [N, M] from uncertainty embeddings u [N, Du], v [M, Du].

    sumvec: ||u_i + v_j||^2 (the paper: vectors added before the norm); sum: ||u_i||^2 + ||v_j||^2;
    diff: ||u_i - v_j||^2 (the official code's expansion). `v=None` means certain references (class
    proxies, v = 0), for which all forms equal ||u_i||^2 (returned as [N, 1]).
    """
    if beta_form not in BETA_FORMS:
        raise ValueError(f"beta_form must be one of {BETA_FORMS}, got {beta_form!r}")
    uu = jnp.sum(u * u, axis=-1)[:, None]
    if v is None:
        return uu
    vv = jnp.sum(v * v, axis=-1)[None, :]
    if beta_form == "sum":
        return uu + vv
    cross = 2.0 * (u @ v.T)
    return jnp.maximum(uu + vv + cross if beta_form == "sumvec" else uu + vv - cross, 0.0)


class ISMTerms(NamedTuple):
    """The pieces of the introspective metric for N x M pairs (each [N, M] or broadcastable to it)."""

    cos_distance: Array  # c = 1 - cos(x_i, y_j), clamped at 0
    alpha: Array  # semantic distance alpha (the prefactor of D_IN)
    alpha_exponent: Array  # alpha' in the exponent (alpha itself except in compat_raw_proxy)
    beta: Array  # uncertainty beta, including beta_offset


def introspective_terms(
    x: jnp.ndarray,
    y: jnp.ndarray,
    u: jnp.ndarray | None = None,
    v: jnp.ndarray | None = None,
    *,
    alpha_mode: str = "cos",
    beta_form: str = "sumvec",
    beta_offset: float = 0.0,
    uncertainty_l2norm: bool = False,
) -> ISMTerms:
    """(c, alpha, alpha', beta) of the introspective metric; see `introspective` for the table."""
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")
    if uncertainty_l2norm:
        u = None if u is None else u / jnp.sqrt(jnp.sum(u * u, -1, keepdims=True) + EPS)
        v = None if v is None else v / jnp.sqrt(jnp.sum(v * v, -1, keepdims=True) + EPS)
    c = jnp.maximum(1.0 - cosine(x, y), 0.0)
    if u is None and v is None:
        beta = jnp.zeros((), dtype=c.dtype)
    elif u is None:
        beta = introspective_beta(v, None, beta_form=beta_form).T
    else:
        beta = introspective_beta(u, v, beta_form=beta_form)
    beta = beta + beta_offset
    if alpha_mode == "cos":
        alpha = exponent = c
    elif alpha_mode == "sqeuclid_norm":
        alpha = exponent = 2.0 * c
    elif alpha_mode == "euclid_norm":
        alpha = exponent = safe_sqrt(2.0 * c)
    else:
        alpha = c
        exponent = sq_euclidean(l2_normalize(x), y)
    return ISMTerms(c, alpha, exponent, beta)


def introspective(
    x: jnp.ndarray,
    y: jnp.ndarray,
    u: jnp.ndarray | None = None,
    v: jnp.ndarray | None = None,
    *,
    alpha_mode: str = "cos",
    beta_form: str = "sumvec",
    ism_form: str = "relative",
    tau: float = 5.0,
    beta_offset: float = 0.0,
    uncertainty_l2norm: bool = False,
    alpha_eps: float = 1e-6,
) -> Pairwise:
    """Introspective similarity metric between semantic embeddings x [N, D], y [M, D] with
    uncertainty embeddings u [N, Du], v [M, Du] (None = certain, u = 0; class proxies are certain).

    With c = 1 - cos(x_i, y_j) and beta = beta_form(u_i, v_j) + beta_offset:

    ================  ===========================  ======================  ============================
    alpha_mode        alpha (distance)             alpha' (exponent)       similarity s_IN
    ================  ===========================  ======================  ============================
    cos               c                            alpha                   1 - c e^{-r}
    sqeuclid_norm     2c = ||x^ - y^||^2           alpha                   1 - c e^{-r}
    euclid_norm       sqrt(2c) = ||x^ - y^||       alpha                   1 - c e^{-2r}
    compat_raw_proxy  c                            ||x^ - y||^2 (raw y)    1 - c e^{-r}
    ================  ===========================  ======================  ============================

    D_IN = alpha e^{-r}, r = beta / (tau alpha') (relative) or beta / tau (absolute); s_IN is the cosine
    whose alpha equals D_IN, so at zero uncertainty s_IN = cos and D_IN = alpha exactly.
    `uncertainty_l2norm` applies the official code's u / sqrt(|u|^2 + 1e-12) to u and v.
    Returns Pairwise(similarity=s_IN, distance=D_IN).
    """
    t = introspective_terms(
        x, y, u, v, alpha_mode=alpha_mode, beta_form=beta_form, beta_offset=beta_offset,
        uncertainty_l2norm=uncertainty_l2norm,
    )
    decay = ism_decay(t.beta, t.alpha_exponent, tau=tau, ism_form=ism_form, alpha_eps=alpha_eps)
    # s_IN = 1 - f^{-1}(D_IN) written without the round trip through f (no sqrt, no cancellation).
    shrink = decay * decay if alpha_mode == "euclid_norm" else decay
    return Pairwise(1.0 - t.cos_distance * shrink, t.alpha * decay)
