"""Pairwise similarities between two sets of embeddings, each an [N, M] matrix.

Two layers:

- Array functions (`cosine`, `dot`, `neg_sq_euclidean`, `chord_distance`, `introspective_distance`,
  `introspective`, ...) compute one matrix from arrays.
- The registry (`get_similarity(name, **options)`) turns a name from a config into a function of two
  *embedding bundles* returning a `Pairwise(similarity, distance)`. A bundle is a dict with
  'embedding' [N, D] and, optionally, 'uncertainty' [N, Du] (IDML), 'kappa' [N] (an isotropic vMF
  concentration, e.g. of a class proxy) or 'kappas' [N, D] (nivMF proxy concentrations).

Every similarity comes with the distance its pair losses (contrastive, triplet, margin, FastAP and the
triplet miners) use; higher similarity means lower distance:

=================  ==========================================  =========================================
name               similarity s_ij                             distance d_ij
=================  ==========================================  =========================================
cosine             cos(x_i, y_j)                               chord sqrt(2 - 2 s) = |x^_i - y^_j|
                                                               (pytorch-metric-learning's LpDistance)
dot                <x_i, y_j>                                  -s
l2                 -|x_i - y_j|^2                              |x_i - y_j|
introspective      1 - f^-1(D_IN), the cosine whose alpha      D_IN = alpha exp(-beta / (tau alpha'))
                   equals D_IN (see `introspective`)           (IDML; = alpha at zero uncertainty)
ppk / el /         log PPK_rho(vMF_i, vMF_j), rho free / 1 /   -s
bhattacharyya      1/2
kl                 -KL(vMF_i || vMF_j)                         -s = KL
loglik             log vMF(mu_i; mu_j, kappa_j)                -s
loglik_nivmf       log nivMF(mu_i; mu_j, K_j)                  -s
el_nivmf           log E_{x ~ vMF_i}[nivMF_j(x)^(1/T')]        -s
=================  ==========================================  =========================================

The *_nivmf entries (ppk_nivmf, bhattacharyya_nivmf, kl_nivmf, l2_nivmf, cosine_nivmf) and l2_vmf are the
same comparisons against nivMF / vMF proxies (Figure-5 grid of specs/nivmf.md); their distance is -s, or
the chord / Euclidean distance for cosine_nivmf / l2_*.
Images are vMF(mu = e/|e|, kappa = |e|); references take their concentration from 'kappa' / 'kappas'
when present. The kernels are log-values in nats, so margins of distance losses on them are in nats.
A bundle's natural parameter is kappa * embedding / |embedding| when it carries 'kappa', else the raw
embedding; `l2` and `dot` compare natural parameters, so a vMF proxy (mu_c, kappa_c) is the point
kappa_c mu_c. Proxies carry no 'uncertainty': the introspective metric treats them as certain (u = 0).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from probdml import distributions, special
from probdml.errors import ConfigError, unknown_choice

Array = jax.Array
Bundle = Mapping[str, Array]

_EPS = 1e-12


class Pairwise(NamedTuple):
    """A pairwise comparison of N queries with M references: both matrices are [N, M]."""

    similarity: Array  # higher = more similar
    distance: Array  # lower = more similar; what distance-based losses and miners use


def l2_normalize(x: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """x / max(||x||, 1e-12) along `axis` (zero vectors stay zero, gradients finite)."""
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jnp.reciprocal(jnp.sqrt(jnp.maximum(sq, _EPS * _EPS)))


def safe_sqrt(x: jnp.ndarray) -> jnp.ndarray:
    """sqrt(max(x, 0)) with a zero (not infinite or NaN) gradient where x <= 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def cosine(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Cosine similarity s_ij = <x_i, y_j> / (||x_i|| ||y_j||), in [-1, 1]; x [N, D], y [M, D] -> [N, M]."""
    return l2_normalize(x) @ l2_normalize(y).T


def dot(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Inner product s_ij = <x_i, y_j>; x [N, D], y [M, D] -> [N, M]."""
    return x @ y.T


def sq_euclidean(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Squared Euclidean distance ||x_i - y_j||^2 = |x_i|^2 + |y_j|^2 - 2 <x_i, y_j>, clamped at 0."""
    sq = jnp.sum(x * x, axis=-1)[:, None] + jnp.sum(y * y, axis=-1)[None, :] - 2.0 * (x @ y.T)
    return jnp.maximum(sq, 0.0)


def neg_sq_euclidean(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Negative squared Euclidean distance -||x_i - y_j||^2 (a similarity); [N, D], [M, D] -> [N, M]."""
    return -sq_euclidean(x, y)


def chord_distance(cos: jnp.ndarray) -> jnp.ndarray:
    """Euclidean distance between unit vectors with cosine `cos`: sqrt(2 - 2 cos), in [0, 2].

    Equals pytorch-metric-learning's LpDistance(p=2, power=1, normalize_embeddings=True).
    The gradient is zero (not infinite) at cos = 1.
    """
    return safe_sqrt(2.0 - 2.0 * cos)


# ----------------------------------------------------------------------------------------------------
# Introspective similarity metric (IDML, specs/idml.md sections 1.2-2 and D1-D10)

ALPHA_MODES = ("cos", "sqeuclid_norm", "euclid_norm", "compat_raw_proxy")
BETA_FORMS = ("sumvec", "sum", "diff")
ISM_FORMS = ("relative", "absolute")


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
    absolute (the seed's statement):         D_IN = alpha exp(-beta / tau)
    alpha' = `alpha_exponent` if given (the official code's raw-proxy distance, D3), else alpha.
    0 < D_IN <= alpha, D_IN = alpha iff beta = 0; dD/dalpha = (1 + r) e^{-r} with r = beta / (tau alpha)
    (relative). The clamp alpha' >= `alpha_eps` keeps D_IN and its gradients finite as alpha -> 0 (D10).
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
        u = None if u is None else u / jnp.sqrt(jnp.sum(u * u, -1, keepdims=True) + _EPS)
        v = None if v is None else v / jnp.sqrt(jnp.sum(v * v, -1, keepdims=True) + _EPS)
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
    `uncertainty_l2norm` applies the official code's u / sqrt(|u|^2 + 1e-12) to u and v (D1).
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


# ----------------------------------------------------------------------------------------------------
# vMF kernels (specs/nivmf.md sections 1-3). An image is vMF(mu = e/|e|, kappa = |e|); a proxy bundle
# gives its direction in 'embedding' and its concentration in 'kappa' [M] (isotropic) or 'kappas'
# [M, D] (nivMF, K = diag(kappas)). Kernels are log-values: log PPK, -KL, log-likelihoods.

NORMALIZERS = ("exact", "reference_quadratic")
NIVMF_FORMS = distributions.NIVMF_FORMS
EL_ESTIMATORS = ("closed_form", "monte_carlo")
TEMPERATURE_PLACEMENTS = ("outside", "inside")


def _log_normalizer(normalizer: str) -> Callable[[Array, int], Array]:
    if normalizer == "exact":
        return special.log_vmf_normalizer
    if normalizer == "reference_quadratic":
        return distributions.reference_log_normalizer
    raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")


def vmf_parameters(bundle: Bundle) -> tuple[Array, Array]:
    """(mu [N, D], kappa [N]) of a bundle: mu = e/|e|, kappa = bundle['kappa'] or |e| (zero rows: 0, 0)."""
    e = bundle["embedding"]
    mu = l2_normalize(e)
    kappa = bundle["kappa"] if "kappa" in bundle else safe_sqrt(jnp.sum(e * e, axis=-1))
    return mu, kappa


def _resultant(kappa_a: Array, kappa_b: Array, cos: Array) -> Array:
    """|kappa_a mu_a + kappa_b mu_b| = sqrt(ka^2 + kb^2 + 2 ka kb cos) for [N] x [M] -> [N, M]."""
    ka, kb = kappa_a[:, None], kappa_b[None, :]
    return safe_sqrt(ka * ka + kb * kb + 2.0 * ka * kb * cos)


def ppk(mu_a: Array, kappa_a: Array, mu_b: Array, kappa_b: Array, *, rho: float = 1.0,
        normalizer: str = "exact") -> Array:
    """log probability product kernel of order rho between vMF(mu_a_i, kappa_a_i) and vMF(mu_b_j, kappa_b_j):

    log int f_a^rho f_b^rho dx = rho (log C_p(ka) + log C_p(kb)) - log C_p(rho |ka mu_a + kb mu_b|)  [N, M].
    rho = 1: expected likelihood kernel (EL); rho = 1/2: log Bhattacharyya coefficient.
    """
    log_c = _log_normalizer(normalizer)
    p = mu_a.shape[-1]
    resultant = _resultant(kappa_a, kappa_b, mu_a @ mu_b.T)
    own = log_c(kappa_a, p)[:, None] + log_c(kappa_b, p)[None, :]
    return rho * own - log_c(rho * resultant, p)


def vmf_kl(mu_a: Array, kappa_a: Array, mu_b: Array, kappa_b: Array, *, normalizer: str = "exact",
           exact_mean_length: bool = True) -> Array:
    """KL(vMF(mu_a_i, ka_i) || vMF(mu_b_j, kb_j)) = log C_p(ka) - log C_p(kb) + A_p(ka) (ka - kb mu_b.mu_a) [N, M].

    `exact_mean_length=False` replaces A_p(ka) by 1, as the reference code does (C7).
    """
    log_c = _log_normalizer(normalizer)
    p = mu_a.shape[-1]
    mean_length = special.vmf_mean_resultant_length(kappa_a, p) if exact_mean_length else jnp.ones_like(kappa_a)
    cos = mu_a @ mu_b.T
    own = log_c(kappa_a, p) + mean_length * kappa_a
    return own[:, None] - log_c(kappa_b, p)[None, :] - mean_length[:, None] * kappa_b[None, :] * cos


def vmf_loglik(mu_a: Array, mu_b: Array, kappa_b: Array, *, normalizer: str = "exact") -> Array:
    """Point log-likelihood log vMF(mu_a_i; mu_b_j, kb_j) = log C_p(kb) + kb mu_b.mu_a  [N, M]."""
    log_c = _log_normalizer(normalizer)
    return log_c(kappa_b, mu_a.shape[-1])[None, :] + kappa_b[None, :] * (mu_a @ mu_b.T)


def _nivmf_constants(mu_b: Array, kappas_b: Array, normalizer: str) -> tuple[Array, Array, Array]:
    """w = K mu [M, D], |w| [M] (clamped at 1e-12) and log C_p(|w|) + log det K [M]."""
    w = kappas_b * mu_b
    w_norm = jnp.sqrt(jnp.maximum(jnp.sum(w * w, axis=-1), _EPS * _EPS))
    log_c = _log_normalizer(normalizer)
    return w, w_norm, log_c(w_norm, mu_b.shape[-1]) + jnp.sum(jnp.log(kappas_b), axis=-1)


def nivmf_pairwise_log_prob(x: Array, mu_b: Array, kappas_b: Array, *, form: str = "exact",
                            normalizer: str = "exact") -> Array:
    """log nivMF(x; mu_b_j, diag(kappas_b_j)) for points x [..., N, D] and M proxies -> [..., N, M].

    The forms of probdml.distributions.nivmf_log_prob, evaluated with matrix products
    (w.Kx = x . (kappas^2 mu), |Kx|^2 = x^2 . kappas^2) instead of an [..., N, M, D] broadcast.
    """
    if form not in NIVMF_FORMS:
        raise ValueError(f"form must be one of {NIVMF_FORMS}, got {form!r}")
    w, w_norm, const = _nivmf_constants(mu_b, kappas_b, normalizer)
    if form == "reference_linear":
        return const - jnp.log(w_norm) + x @ w.T
    sq = kappas_b * kappas_b
    kx_norm = jnp.sqrt(jnp.maximum((x * x) @ sq.T, _EPS * _EPS))
    aligned = (x @ (sq * mu_b).T) / kx_norm
    if form == "stretched":
        return const - jnp.log(w_norm) + aligned
    return const + aligned - mu_b.shape[-1] * jnp.log(kx_norm)


def el_nivmf(
    mu_a: Array,
    kappa_a: Array,
    mu_b: Array,
    kappas_b: Array,
    *,
    form: str = "reference_linear",
    estimator: str = "closed_form",
    num_samples: int = 20,
    temperature: float | Array = 1.0,
    temperature_placement: str = "outside",
    normalizer: str = "exact",
    key: Array | None = None,
    kappa_gradient: str = "implicit",
) -> Array:
    """Expected likelihood of nivMF proxies under image vMFs, log E_{x ~ vMF(mu_a_i, ka_i)}[nivMF_j(x)^(1/T')]
    [N, M], with T' = T for `temperature_placement='inside'` (the reference code's logit, which estimates
    log E[niv^(1/T)], not (1/T) log E[niv]) and T' = 1 for 'outside' (the loss then divides by T).

    closed_form (form 'reference_linear' only, whose exponent is linear in x): with
    a_j = log C_p(|w_j|) + log det K_j - log|w_j|,
        log E[exp(l_j(x) / T')] = a_j / T' + log C_p(ka) - log C_p(|ka mu_a + w_j / T'|).
    monte_carlo: log (1/n) sum_s exp(l_j(x_s) / T') over n reparameterised samples x_s ~ vMF(mu_a, ka)
    (probdml.distributions.vmf_sample, shared by all proxies); Jensen-biased low for small n.
    `kappa_gradient`: the sampler's concentration gradient ('implicit', exact; 'proposal', the official).
    """
    if estimator not in EL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {EL_ESTIMATORS}, got {estimator!r}")
    if temperature_placement not in TEMPERATURE_PLACEMENTS:
        raise ValueError(
            f"temperature_placement must be one of {TEMPERATURE_PLACEMENTS}, got {temperature_placement!r}")
    t = temperature if temperature_placement == "inside" else 1.0
    p = mu_a.shape[-1]
    if estimator == "closed_form":
        if form != "reference_linear":
            raise ValueError(f"the closed form exists only for form='reference_linear', not {form!r}; "
                             "use estimator='monte_carlo'")
        w, w_norm, const = _nivmf_constants(mu_b, kappas_b, normalizer)
        log_c = _log_normalizer(normalizer)
        shift = w / t
        ka = kappa_a[:, None]
        shift_sq = jnp.sum(shift * shift, axis=-1)[None, :]
        resultant = safe_sqrt(ka * ka + shift_sq + 2.0 * ka * (mu_a @ shift.T))
        return (const - jnp.log(w_norm))[None, :] / t + log_c(kappa_a, p)[:, None] - log_c(resultant, p)
    if key is None:
        raise ValueError("el_nivmf with estimator='monte_carlo' needs a PRNG key")
    x = distributions.vmf_sample(key, mu_a, kappa_a, (num_samples,), kappa_gradient=kappa_gradient)  # [n, N, D]
    log_lik = nivmf_pairwise_log_prob(x, mu_b, kappas_b, form=form, normalizer=normalizer) / t
    return jax.nn.logsumexp(log_lik, axis=0) - math.log(num_samples)


# ----------------------------------------------------------------------------------------------------
# Registry: functions of two embedding bundles


def natural_parameter(bundle: Bundle) -> Array:
    """kappa * e / |e| for a bundle with 'kappa' [N] (a vMF given by direction and concentration), else e."""
    if "kappa" in bundle:
        return bundle["kappa"][:, None] * l2_normalize(bundle["embedding"])
    return bundle["embedding"]


def _cosine_factory() -> Callable[..., Pairwise]:
    def pairwise(a: Bundle, b: Bundle, *, key: Array | None = None, temperature=None) -> Pairwise:
        del key, temperature
        sim = cosine(a["embedding"], b["embedding"])
        return Pairwise(sim, chord_distance(sim))

    return pairwise


def _dot_factory() -> Callable[..., Pairwise]:
    def pairwise(a: Bundle, b: Bundle, *, key: Array | None = None, temperature=None) -> Pairwise:
        del key, temperature
        sim = dot(natural_parameter(a), natural_parameter(b))
        return Pairwise(sim, -sim)

    return pairwise


def _l2_factory(*, normalize: bool = False) -> Callable[..., Pairwise]:
    def pairwise(a: Bundle, b: Bundle, *, key: Array | None = None, temperature=None) -> Pairwise:
        del key, temperature
        x, y = natural_parameter(a), natural_parameter(b)
        if normalize:
            x, y = l2_normalize(x), l2_normalize(y)
        sq = sq_euclidean(x, y)
        return Pairwise(-sq, safe_sqrt(sq))

    return pairwise


# The official IDML retrieval code's configuration (specs/idml.md section 6, "Compatibility preset").
ISM_COMPAT_PRESET = {"uncertainty_l2norm": True, "beta_offset": 4.0, "alpha_mode": "compat_raw_proxy", "tau": 5.0}


def _introspective_factory(
    *,
    alpha_mode: str = "cos",
    beta_form: str = "sumvec",
    ism_form: str = "relative",
    tau: float = 5.0,
    beta_offset: float = 0.0,
    uncertainty_l2norm: bool = False,
    alpha_eps: float = 1e-6,
    compat: bool = False,
) -> Callable[..., Pairwise]:
    """`compat=True` applies ISM_COMPAT_PRESET, overriding the four options it names."""
    options = dict(
        alpha_mode=alpha_mode,
        beta_form=beta_form,
        ism_form=ism_form,
        tau=tau,
        beta_offset=beta_offset,
        uncertainty_l2norm=uncertainty_l2norm,
        alpha_eps=alpha_eps,
    )
    if compat:
        options.update(ISM_COMPAT_PRESET)
    _check_choice("alpha_mode", options["alpha_mode"], ALPHA_MODES)
    _check_choice("beta_form", options["beta_form"], BETA_FORMS)
    _check_choice("ism_form", options["ism_form"], ISM_FORMS)
    if not options["tau"] > 0:
        raise ConfigError(f"introspective similarity: tau must be > 0, got {tau!r}")

    def pairwise(a: Bundle, b: Bundle, *, key: Array | None = None, temperature=None) -> Pairwise:
        del key, temperature
        return introspective(
            a["embedding"], b["embedding"], a.get("uncertainty"), b.get("uncertainty"), **options
        )

    return pairwise


def _check_choice(kind: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise unknown_choice(kind, value, valid)


def _isotropic_parameters(bundle: Bundle) -> tuple[Array, Array]:
    if "kappas" in bundle:
        raise ValueError("this kernel compares isotropic vMFs; the bundle has per-axis 'kappas' (use el_nivmf or "
                         "loglik_nivmf)")
    return vmf_parameters(bundle)


# Floor of the per-axis concentrations of an isotropic bundle read as nivMF (log det K = p log kappa).
NIVMF_KAPPA_FLOOR = 1e-6


def _nivmf_parameters(bundle: Bundle) -> tuple[Array, Array]:
    """(mu, kappas [M, D]); a bundle without 'kappas' is isotropic, kappas = max(kappa, 1e-6) * 1."""
    if "kappas" in bundle:
        return l2_normalize(bundle["embedding"]), bundle["kappas"]
    mu, kappa = vmf_parameters(bundle)
    return mu, jnp.maximum(kappa, NIVMF_KAPPA_FLOOR)[:, None] * jnp.ones_like(mu)


def _check_normalizer(normalizer: str) -> None:
    _check_choice("normalizer", normalizer, NORMALIZERS)


def _ppk_factory(*, rho: float = 1.0, normalizer: str = "exact") -> Callable[..., Pairwise]:
    _check_normalizer(normalizer)
    if not rho > 0:
        raise ConfigError(f"ppk: rho must be > 0, got {rho!r}")

    def pairwise(a: Bundle, b: Bundle, *, key: Array | None = None, temperature=None) -> Pairwise:
        del key, temperature
        sim = ppk(*_isotropic_parameters(a), *_isotropic_parameters(b), rho=rho, normalizer=normalizer)
        return Pairwise(sim, -sim)

    return pairwise


def _el_factory(*, normalizer: str = "exact") -> Callable[..., Pairwise]:
    return _ppk_factory(rho=1.0, normalizer=normalizer)


def _bhattacharyya_factory(*, normalizer: str = "exact") -> Callable[..., Pairwise]:
    return _ppk_factory(rho=0.5, normalizer=normalizer)


def _kl_factory(*, reference_sign: bool = False, exact_mean_length: bool = True,
                normalizer: str = "exact") -> Callable[..., Pairwise]:
    """s = -KL(image || reference); `reference_sign=True` uses +KL (the reference criterion, C7)."""
    _check_normalizer(normalizer)

    def pairwise(a: Bundle, b: Bundle, *, key: Array | None = None, temperature=None) -> Pairwise:
        del key, temperature
        kl = vmf_kl(*_isotropic_parameters(a), *_isotropic_parameters(b), normalizer=normalizer,
                    exact_mean_length=exact_mean_length)
        sim = kl if reference_sign else -kl
        return Pairwise(sim, -sim)

    return pairwise


def _loglik_factory(*, normalizer: str = "exact") -> Callable[..., Pairwise]:
    _check_normalizer(normalizer)

    def pairwise(a: Bundle, b: Bundle, *, key: Array | None = None, temperature=None) -> Pairwise:
        del key, temperature
        mu_a, _ = _isotropic_parameters(a)
        mu_b, kappa_b = _isotropic_parameters(b)
        sim = vmf_loglik(mu_a, mu_b, kappa_b, normalizer=normalizer)
        return Pairwise(sim, -sim)

    return pairwise


def _loglik_nivmf_factory(*, form: str = "exact", normalizer: str = "exact") -> Callable[..., Pairwise]:
    _check_choice("nivmf form", form, NIVMF_FORMS)
    _check_normalizer(normalizer)

    def pairwise(a: Bundle, b: Bundle, *, key: Array | None = None, temperature=None) -> Pairwise:
        del key, temperature
        mu_b, kappas_b = _nivmf_parameters(b)
        sim = nivmf_pairwise_log_prob(l2_normalize(a["embedding"]), mu_b, kappas_b, form=form, normalizer=normalizer)
        return Pairwise(sim, -sim)

    return pairwise


def _el_nivmf_factory(
    *,
    form: str = "reference_linear",
    estimator: str = "closed_form",
    num_samples: int = 20,
    temperature_placement: str = "outside",
    normalizer: str = "exact",
    kappa_gradient: str = "implicit",
    compat: bool = False,
) -> Callable[..., Pairwise]:
    """EL-nivMF (D6); `compat=True` applies EL_NIVMF_COMPAT_PRESET (the official computation)."""
    if compat:
        preset = EL_NIVMF_COMPAT_PRESET
        form, estimator, num_samples = preset["form"], preset["estimator"], preset["num_samples"]
        temperature_placement, normalizer = preset["temperature_placement"], preset["normalizer"]
        kappa_gradient = preset["kappa_gradient"]
    _check_choice("kappa_gradient", kappa_gradient, KAPPA_GRADIENTS)
    _check_choice("nivmf form", form, NIVMF_FORMS)
    _check_choice("el_nivmf estimator", estimator, EL_ESTIMATORS)
    _check_choice("temperature_placement", temperature_placement, TEMPERATURE_PLACEMENTS)
    _check_normalizer(normalizer)
    if estimator == "closed_form" and form != "reference_linear":
        raise ConfigError(f"el_nivmf: the closed form exists only for form='reference_linear', not {form!r}; "
                          "set estimator='monte_carlo'")
    if int(num_samples) < 1:
        raise ConfigError(f"el_nivmf: num_samples must be >= 1, got {num_samples!r}")

    def pairwise(a: Bundle, b: Bundle, *, key: Array | None = None, temperature=None) -> Pairwise:
        sim = el_nivmf(*vmf_parameters(a), *_nivmf_parameters(b), form=form, estimator=estimator,
                       num_samples=int(num_samples), temperature=1.0 if temperature is None else temperature,
                       temperature_placement=temperature_placement, normalizer=normalizer, key=key,
                       kappa_gradient=kappa_gradient)
        return Pairwise(sim, -sim)

    return pairwise


# The official EL-nivMF computation (specs/nivmf.md sections 2 and 8: C1, C3, C4, C5).
EL_NIVMF_COMPAT_PRESET = {
    "form": "reference_linear",
    "estimator": "monte_carlo",
    "num_samples": 5,
    "temperature_placement": "inside",
    "normalizer": "reference_quadratic",
    "kappa_gradient": "proposal",
}
KAPPA_GRADIENTS = ("implicit", "proposal")


# ----------------------------------------------------------------------------------------------------
# The rest of the Figure-5 grid with nivMF proxies: PPK of any order (Bhattacharyya), KL, L2 and cosine.
# With the reference_linear form, nivMF_c(x) = exp(b_c) vMF(x; w_c/|w_c|, |w_c|), b_c = log det K_c - log|w_c|
# (an isotropic vMF in disguise), so PPK and KL have closed forms; the other forms need Monte Carlo.


def nivmf_natural_parameters(mu_b: Array, kappas_b: Array, normalizer: str = "exact") -> tuple[Array, Array]:
    """(w [M, D], a [M]) with w_c = K_c mu_c and a_c = log C_p(|w_c|) + log det K_c - log|w_c|: the
    reference_linear log density is a_c + w_c.x."""
    w, w_norm, const = _nivmf_constants(mu_b, kappas_b, normalizer)
    return w, const - jnp.log(w_norm)


def vmf_samples(key: Array, mu_a: Array, kappa_a: Array, num_samples: int, kappa_gradient: str = "implicit") -> Array:
    """num_samples reparameterised draws from each vMF(mu_a_i, kappa_a_i): [num_samples, N, D]."""
    return distributions.vmf_sample(key, mu_a, kappa_a, (num_samples,), kappa_gradient=kappa_gradient)


def nivmf_ppk(mu_a: Array, kappa_a: Array, mu_b: Array, kappas_b: Array, *, rho: float = 0.5,
              normalizer: str = "exact") -> Array:
    """log PPK_rho between image vMFs and reference_linear nivMF proxies, exactly (D7):
    rho (log C_p(ka) + a_c) - log C_p(rho |ka mu_a + w_c|). [N, M], nats."""
    w, a = nivmf_natural_parameters(mu_b, kappas_b, normalizer)
    p = mu_a.shape[-1]
    w_norm = jnp.sqrt(jnp.sum(w * w, axis=-1))
    resultant = _resultant(kappa_a, w_norm, mu_a @ l2_normalize(w).T)
    return rho * (special.log_vmf_normalizer(kappa_a, p)[:, None] + a[None, :]) \
        - special.log_vmf_normalizer(rho * resultant, p)


def nivmf_ppk_monte_carlo(samples: Array, mu_a: Array, kappa_a: Array, mu_b: Array, kappas_b: Array, *,
                          rho: float = 0.5, form: str = "exact", normalizer: str = "exact") -> Array:
    """log PPK_rho by Monte Carlo (D7): log (1/n) sum_s exp((rho - 1) log vMF_i(x_s) + rho log nivMF_c(x_s)),
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


def _nivmf_kernel_factory(kernel: str, *, rho: float = 0.5, form: str = "reference_linear",
                          estimator: str = "closed_form", num_samples: int = 20, normalizer: str = "exact",
                          kappa_gradient: str = "implicit") -> Callable[..., Pairwise]:
    _check_choice("nivmf form", form, NIVMF_FORMS)
    _check_choice("estimator", estimator, EL_ESTIMATORS)
    _check_choice("kappa_gradient", kappa_gradient, KAPPA_GRADIENTS)
    _check_normalizer(normalizer)
    if kernel in ("ppk", "kl") and estimator == "closed_form" and form != "reference_linear":
        raise ConfigError(f"{kernel}_nivmf: the closed form exists only for form='reference_linear', not {form!r}; "
                          "set estimator='monte_carlo'")
    if not rho > 0:
        raise ConfigError(f"ppk_nivmf: rho must be > 0, got {rho!r}")
    if int(num_samples) < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples!r}")

    def pairwise(a: Bundle, b: Bundle, *, key: Array | None = None, temperature=None) -> Pairwise:
        del temperature
        mu_a, kappa_a = vmf_parameters(a)
        mu_b, kappas_b = _nivmf_parameters(b)
        if kernel in ("l2", "cosine"):
            w, _ = nivmf_natural_parameters(mu_b, kappas_b, normalizer)
            if kernel == "cosine":
                sim = cosine(a["embedding"], w)
                return Pairwise(sim, chord_distance(sim))
            sq = sq_euclidean(a["embedding"], w)
            return Pairwise(-sq, safe_sqrt(sq))
        if estimator == "closed_form":
            if kernel == "ppk":
                sim = nivmf_ppk(mu_a, kappa_a, mu_b, kappas_b, rho=rho, normalizer=normalizer)
            else:
                sim = nivmf_neg_kl(mu_a, kappa_a, mu_b, kappas_b, normalizer=normalizer)
            return Pairwise(sim, -sim)
        if key is None:
            raise ValueError(f"{kernel}_nivmf with estimator='monte_carlo' needs a PRNG key")
        x = vmf_samples(key, mu_a, kappa_a, int(num_samples), kappa_gradient)
        if kernel == "ppk":
            sim = nivmf_ppk_monte_carlo(x, mu_a, kappa_a, mu_b, kappas_b, rho=rho, form=form, normalizer=normalizer)
        else:
            sim = nivmf_neg_kl_monte_carlo(x, mu_a, kappa_a, mu_b, kappas_b, form=form, normalizer=normalizer)
        return Pairwise(sim, -sim)

    return pairwise


def _ppk_nivmf_factory(*, rho: float = 0.5, form: str = "reference_linear", estimator: str = "closed_form",
                       num_samples: int = 20, normalizer: str = "exact",
                       kappa_gradient: str = "implicit") -> Callable[..., Pairwise]:
    """log PPK_rho(vMF, nivMF) (D7; at rho = 1 el_nivmf is the same kernel)."""
    return _nivmf_kernel_factory("ppk", rho=rho, form=form, estimator=estimator, num_samples=num_samples,
                                 normalizer=normalizer, kappa_gradient=kappa_gradient)


def _bhattacharyya_nivmf_factory(*, form: str = "reference_linear", estimator: str = "closed_form",
                                 num_samples: int = 20, normalizer: str = "exact",
                                 kappa_gradient: str = "implicit") -> Callable[..., Pairwise]:
    """B-nivMF: the PPK of order 1/2 with nivMF proxies."""
    return _ppk_nivmf_factory(rho=0.5, form=form, estimator=estimator, num_samples=num_samples,
                              normalizer=normalizer, kappa_gradient=kappa_gradient)


def _kl_nivmf_factory(*, form: str = "reference_linear", estimator: str = "closed_form", num_samples: int = 20,
                      normalizer: str = "exact", kappa_gradient: str = "implicit") -> Callable[..., Pairwise]:
    """-KL(vMF(image) || nivMF_c) (D7)."""
    return _nivmf_kernel_factory("kl", form=form, estimator=estimator, num_samples=num_samples,
                                 normalizer=normalizer, kappa_gradient=kappa_gradient)


def _l2_nivmf_factory() -> Callable[..., Pairwise]:
    """-|e_i - w_c|^2 with the nivMF proxy's point w_c = K_c mu_c."""
    return _nivmf_kernel_factory("l2")


def _cosine_nivmf_factory() -> Callable[..., Pairwise]:
    """cos(e_i, w_c) with the nivMF proxy's point w_c = K_c mu_c."""
    return _nivmf_kernel_factory("cosine")


SIMILARITIES: dict[str, Callable[..., Callable[..., Pairwise]]] = {
    "cosine": _cosine_factory,
    "dot": _dot_factory,
    "l2": _l2_factory,
    "introspective": _introspective_factory,
    "ppk": _ppk_factory,
    "el": _el_factory,
    "bhattacharyya": _bhattacharyya_factory,
    "kl": _kl_factory,
    "loglik": _loglik_factory,
    "loglik_nivmf": _loglik_nivmf_factory,
    "el_nivmf": _el_nivmf_factory,
    "l2_vmf": _l2_factory,
    "ppk_nivmf": _ppk_nivmf_factory,
    "bhattacharyya_nivmf": _bhattacharyya_nivmf_factory,
    "kl_nivmf": _kl_nivmf_factory,
    "l2_nivmf": _l2_nivmf_factory,
    "cosine_nivmf": _cosine_nivmf_factory,
}

# Similarities whose values lie in [-1, 1] (what angular-margin losses such as ArcFace need).
BOUNDED_SIMILARITIES = frozenset({"cosine", "introspective"})

# Similarities that read proxy concentrations: 'scalar' = bundle['kappa'] [M], 'vector' = bundle['kappas'] [M, D].
PROXY_CONCENTRATION: dict[str, str] = {
    "ppk": "scalar",
    "el": "scalar",
    "bhattacharyya": "scalar",
    "kl": "scalar",
    "loglik": "scalar",
    "loglik_nivmf": "vector",
    "el_nivmf": "vector",
    "l2_vmf": "scalar",
    "ppk_nivmf": "vector",
    "bhattacharyya_nivmf": "vector",
    "kl_nivmf": "vector",
    "l2_nivmf": "vector",
    "cosine_nivmf": "vector",
}

# Similarities that, for some options, apply the softmax temperature themselves (S = s / T computed
# inside, e.g. the reference EL-nivMF log-mean-exp): name -> predicate on the options dict.
TEMPERATURE_INSIDE: dict[str, Callable[[dict], bool]] = {
    "el_nivmf": lambda options: bool(options.get("compat", False))
    or options.get("temperature_placement", "outside") == "inside",
}


def similarity_options(name: str) -> tuple[str, ...]:
    """The option names `get_similarity(name, **options)` accepts."""
    if name not in SIMILARITIES:
        raise unknown_choice("similarity", name, SIMILARITIES)
    return tuple(inspect.signature(SIMILARITIES[name]).parameters)


def get_similarity(name: str, **options) -> Callable[..., Pairwise]:
    """The registered similarity `name` with its options, as a function
    (bundle_a, bundle_b, *, key=None, temperature=None) -> Pairwise. `key` feeds Monte Carlo estimates;
    `temperature` is read only by similarities listed in TEMPERATURE_INSIDE (others ignore both).

    Unknown names or options raise probdml.errors.ConfigError listing the valid ones.
    """
    valid = similarity_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"similarity {name!r} has no option(s) {', '.join(unknown)}; valid options: "
            f"{', '.join(valid) if valid else '(none)'}"
        )
    return SIMILARITIES[name](**options)
