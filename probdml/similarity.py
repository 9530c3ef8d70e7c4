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

=================  =============================  ====================================================
name               similarity s_ij                distance d_ij
=================  =============================  ====================================================
cosine             cos(x_i, y_j)                  chord sqrt(2 - 2 s) = ||x_i/|x_i| - y_j/|y_j| ||
                                                  (pytorch-metric-learning's normalised LpDistance)
dot                <x_i, y_j>                     -s
l2                 -||x_i - y_j||^2               ||x_i - y_j||
introspective      1 - f^-1(D_IN) (see below)     D_IN = alpha exp(-beta / (tau alpha))
vMF kernels        log kernel, or -KL             -s
=================  =============================  ====================================================

A bundle's natural parameter is kappa * embedding / |embedding| when it carries 'kappa', else the raw
embedding; `l2` compares natural parameters, so a vMF proxy (mu_c, kappa_c) is the point kappa_c mu_c.
"""

from __future__ import annotations

import inspect
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
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")
    if uncertainty_l2norm:
        u = None if u is None else u / jnp.sqrt(jnp.sum(u * u, -1, keepdims=True) + _EPS)
        v = None if v is None else v / jnp.sqrt(jnp.sum(v * v, -1, keepdims=True) + _EPS)
    cos = cosine(x, y)
    c = jnp.maximum(1.0 - cos, 0.0)
    if u is None and v is None:
        beta = jnp.zeros((), dtype=cos.dtype)
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
    decay = ism_decay(beta, exponent, tau=tau, ism_form=ism_form, alpha_eps=alpha_eps)
    # s_IN = 1 - f^{-1}(D_IN) written without the round trip through f (no sqrt, no cancellation).
    shrink = decay * decay if alpha_mode == "euclid_norm" else decay
    return Pairwise(1.0 - c * shrink, alpha * decay)


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


# ----------------------------------------------------------------------------------------------------
# vMF kernels (specs/nivmf.md sections 1-2): images are vMF(mu = e/|e|, kappa = |e|) given by their
# natural parameter e; isotropic proxies are vMF(mu_c, kappa_c); nivMF proxies have a direction v_c
# (used through v_c/|v_c|) and per-axis concentrations kappas_c, K_c = diag(kappas_c), w_c = K_c mu_c.

NORMALIZERS = ("exact", "reference_quadratic")
NIVMF_FORMS = ("reference_linear", "stretched", "exact")
EL_ESTIMATORS = ("auto", "closed_form", "monte_carlo")
KAPPA_GRADIENTS = ("implicit", "proposal")


def _log_normalizer_fn(normalizer: str) -> Callable[[Array, int], Array]:
    if normalizer == "exact":
        return special.log_vmf_normalizer
    if normalizer == "reference_quadratic":
        return distributions.reference_log_normalizer
    raise unknown_choice("normalizer", normalizer, NORMALIZERS)


def vector_norm(x: Array) -> Array:
    """|x| along the last axis with a zero (not NaN) gradient at x = 0."""
    return safe_sqrt(jnp.sum(x * x, axis=-1))


def _norm_of_sum(x: Array, y: Array, scale_y: Array | float = 1.0) -> Array:
    """|x_i + scale_y y_j| for x [N, D], y [M, D] -> [N, M], by |x|^2 + s^2 |y|^2 + 2 s <x, y>."""
    sq = (jnp.sum(x * x, axis=-1)[:, None] + scale_y * scale_y * jnp.sum(y * y, axis=-1)[None, :]
          + 2.0 * scale_y * (x @ y.T))
    return safe_sqrt(sq)


def ppk_vmf(x: Array, y: Array, *, rho: float = 1.0, normalizer: str = "exact") -> Array:
    """log probability-product kernel of order rho between vMF(x_i) and vMF(y_j) (natural parameters
    x [N, D], y [M, D]; D1): log int f_i^rho f_j^rho dx = rho [log C_p(|x_i|) + log C_p(|y_j|)]
    - log C_p(rho |x_i + y_j|). rho = 1: expected likelihood kernel (EL); rho = 1/2: log Bhattacharyya
    coefficient. [N, M], nats."""
    log_c = _log_normalizer_fn(normalizer)
    dim = x.shape[-1]
    kx, ky = vector_norm(x), vector_norm(y)
    return rho * (log_c(kx, dim)[:, None] + log_c(ky, dim)[None, :]) - log_c(rho * _norm_of_sum(x, y), dim)


def neg_kl_vmf(x: Array, y: Array, *, normalizer: str = "exact", reference_sign: bool = False) -> Array:
    """-KL(vMF(x_i) || vMF(y_j)) = -[log C_p(k) - log C_p(k_j) + A_p(k)(k - mu_i.y_j)], k = |x_i|,
    k_j = |y_j| (D4); [N, M], nats. `reference_sign=True` reproduces the official criterion, which
    returns +[log C_p(k) - log C_p(k_j) + k - mu_i.y_j] (A_p(k) -> 1 and no minus sign: maximising it
    pushes images *away* from their proxy; specs/nivmf.md C7)."""
    log_c = _log_normalizer_fn(normalizer)
    dim = x.shape[-1]
    kx, ky = vector_norm(x), vector_norm(y)
    proj = l2_normalize(x) @ y.T  # mu_i . y_j = k_j cos
    if reference_sign:
        return log_c(kx, dim)[:, None] - log_c(ky, dim)[None, :] + kx[:, None] - proj
    mean_len = special.vmf_mean_resultant_length(kx, dim)[:, None]
    return -(log_c(kx, dim)[:, None] - log_c(ky, dim)[None, :] + mean_len * (kx[:, None] - proj))


def loglik_vmf(x: Array, y: Array, *, normalizer: str = "exact") -> Array:
    """log vMF(mu_i; y_j) = log C_p(|y_j|) + mu_i.y_j: the image's mode under the proxy vMF (the
    image concentration is unused, as D5); [N, M], nats."""
    log_c = _log_normalizer_fn(normalizer)
    return log_c(vector_norm(y), x.shape[-1])[None, :] + l2_normalize(x) @ y.T


def nivmf_parameters(v: Array, kappas: Array, normalizer: str = "exact") -> tuple[Array, Array]:
    """(w, a) of nivMF proxies with directions v [C, D] (used as v/|v|) and concentrations kappas [C, D]:
    w_c = K_c mu_c and a_c = log C_p(|w_c|) + sum_d log kappas_cd - log |w_c|, so that the reference
    (N-mc, `reference_linear`) log density is a_c + w_c.x: an isotropic vMF(w_c/|w_c|, |w_c|) times the
    class constant det K_c / |w_c|."""
    w = kappas * l2_normalize(v)
    w_norm = vector_norm(w)
    a = _log_normalizer_fn(normalizer)(w_norm, v.shape[-1]) + jnp.sum(jnp.log(kappas), axis=-1) - jnp.log(w_norm)
    return w, a


def nivmf_log_density_matrix(x: Array, v: Array, kappas: Array, *, form: str = "exact",
                             normalizer: str = "exact") -> Array:
    """log nivMF_c(x) for points x [..., D] on the sphere and every proxy c: [..., C].

    The forms of probdml.distributions.nivmf_log_prob, by matrix products only (no [..., C, D]
    intermediate): with w_c = K_c mu_c, w_c.(K_c x) = x.(K_c^2 mu_c) and |K_c x|^2 = (x*x).kappas_c^2."""
    _check_choice("nivmf_form", form, NIVMF_FORMS)
    w, a = nivmf_parameters(v, kappas, normalizer)
    if form == "reference_linear":
        return x @ w.T + a
    log_det_minus_w = jnp.sum(jnp.log(kappas), axis=-1) - jnp.log(vector_norm(w))
    log_c_w = a - log_det_minus_w
    kx_norm = jnp.sqrt((x * x) @ (kappas * kappas).T)
    exponent = (x @ (kappas * w).T) / kx_norm
    log_det = jnp.sum(jnp.log(kappas), axis=-1)
    if form == "stretched":
        return log_c_w + exponent + log_det_minus_w
    return log_c_w + exponent + log_det - x.shape[-1] * jnp.log(kx_norm)


def _log_mean_exp(x: Array, axis: int = 0) -> Array:
    return jax.nn.logsumexp(x, axis=axis) - jnp.log(x.shape[axis])


def el_nivmf_closed_form(e: Array, v: Array, kappas: Array, *, temperature: Array | float = 1.0,
                         normalizer: str = "exact") -> Array:
    """(1/T-scaled) log expected likelihood of `reference_linear` nivMF proxies under image vMFs, exactly:

        log E_{x ~ vMF(e_i)}[exp(l_c(x) / T)] = a_c / T + log C_p(|e_i|) - log C_p(|e_i + w_c / T|),

    l_c(x) = a_c + w_c.x (`nivmf_parameters`). T = 1 gives the log EL kernel (D6); T != 1 is the estimand
    of the official temperature-inside Monte Carlo average. `normalizer` applies to a_c only (as in the
    official code); the expectation's normalisers are exact. e [B, D], v and kappas [C, D] -> [B, C]."""
    w, a = nivmf_parameters(v, kappas, normalizer)
    dim = e.shape[-1]
    inv_t = 1.0 / temperature
    kappa = vector_norm(e)
    return (a * inv_t)[None, :] + special.log_vmf_normalizer(kappa, dim)[:, None] \
        - special.log_vmf_normalizer(_norm_of_sum(e, w, inv_t), dim)


def vmf_samples(key: Array, e: Array, num_samples: int, kappa_gradient: str = "implicit") -> Array:
    """num_samples draws from each image vMF(e_i/|e_i|, |e_i|): [num_samples, B, D], reparameterised."""
    _check_choice("kappa_gradient", kappa_gradient, KAPPA_GRADIENTS)
    return distributions.vmf_sample(key, l2_normalize(e), vector_norm(e), (num_samples,),
                                    kappa_gradient=kappa_gradient)


def nivmf_ppk_monte_carlo(samples: Array, e: Array, v: Array, kappas: Array, *, rho: float = 1.0,
                          form: str = "exact", temperature: Array | float = 1.0,
                          normalizer: str = "exact") -> Array:
    """Monte Carlo log PPK_rho between image vMFs and nivMF proxies (D6, D7), vectorised over samples,
    images and proxies: log (1/n) sum_s exp([(rho - 1) log vMF_i(x_s) + rho l_c(x_s)] / T),
    x_s ~ vMF(e_i) (`samples` [n, B, D]), l_c = log nivMF_c of `form`. rho = 1, T = 1: log EL kernel;
    T != 1: the official temperature-inside estimator. [B, C]."""
    dim = e.shape[-1]
    log_niv = nivmf_log_density_matrix(samples, v, kappas, form=form, normalizer=normalizer)  # [n, B, C]
    logits = rho * log_niv
    if rho != 1.0:
        log_vmf = special.log_vmf_normalizer(vector_norm(e), dim) + jnp.sum(samples * e, axis=-1)  # [n, B]
        logits = logits + (rho - 1.0) * log_vmf[..., None]
    return _log_mean_exp(logits / temperature, axis=0)


def nivmf_neg_kl_monte_carlo(samples: Array, e: Array, v: Array, kappas: Array, *, form: str = "exact",
                             normalizer: str = "exact") -> Array:
    """-KL(vMF(e_i) || nivMF_c) = H(vMF(e_i)) + E_{x ~ vMF(e_i)}[log nivMF_c(x)] (D7), the expectation by
    the sample mean over `samples` [n, B, D]. [B, C], nats."""
    log_niv = nivmf_log_density_matrix(samples, v, kappas, form=form, normalizer=normalizer)
    return distributions.vmf_entropy(vector_norm(e), e.shape[-1])[:, None] + jnp.mean(log_niv, axis=0)


def nivmf_neg_kl_closed_form(e: Array, v: Array, kappas: Array, *, normalizer: str = "exact") -> Array:
    """-KL(vMF(e_i) || nivMF_c) for the `reference_linear` form, exactly: H(vMF(e_i)) + a_c
    + A_p(|e_i|) mu_i.w_c. [B, C], nats."""
    w, a = nivmf_parameters(v, kappas, normalizer)
    dim = e.shape[-1]
    kappa = vector_norm(e)
    mean_dir = special.vmf_mean_resultant_length(kappa, dim)[:, None] * l2_normalize(e)
    return distributions.vmf_entropy(kappa, dim)[:, None] + a[None, :] + mean_dir @ w.T


def nivmf_ppk_closed_form(e: Array, v: Array, kappas: Array, *, rho: float = 1.0,
                          normalizer: str = "exact") -> Array:
    """log PPK_rho between image vMFs and `reference_linear` nivMF proxies, exactly:
    rho [log C_p(|e_i|) + a_c] - log C_p(rho |e_i + w_c|). [B, C], nats."""
    w, a = nivmf_parameters(v, kappas, normalizer)
    dim = e.shape[-1]
    return rho * (special.log_vmf_normalizer(vector_norm(e), dim)[:, None] + a[None, :]) \
        - special.log_vmf_normalizer(rho * _norm_of_sum(e, w), dim)


def _proxy_kappa(bundle: Bundle, key: str, name: str) -> Array:
    if key not in bundle:
        raise ValueError(f"similarity {name!r} needs proxy concentrations {key!r} in the second bundle; "
                         f"it has {', '.join(sorted(bundle))}")
    return bundle[key]


def _vmf_kernel_factory(kernel: str, *, rho: float = 1.0, normalizer: str = "exact",
                        reference_sign: bool = False) -> Callable[..., Pairwise]:
    _check_choice("normalizer", normalizer, NORMALIZERS)
    if kernel == "ppk" and not 0 < rho:
        raise ConfigError(f"similarity 'ppk': rho must be > 0, got {rho!r}")

    def pairwise(a: Bundle, b: Bundle, *, key: Array | None = None, temperature=None) -> Pairwise:
        del key, temperature
        x, y = natural_parameter(a), natural_parameter(b)
        if kernel == "ppk":
            s = ppk_vmf(x, y, rho=rho, normalizer=normalizer)
        elif kernel == "kl":
            s = neg_kl_vmf(x, y, normalizer=normalizer, reference_sign=reference_sign)
        else:
            s = loglik_vmf(x, y, normalizer=normalizer)
        return Pairwise(s, -s)

    return pairwise


def _elk_factory(*, normalizer: str = "exact") -> Callable[..., Pairwise]:
    """EL-vMF (D2): the PPK of order 1."""
    return _vmf_kernel_factory("ppk", rho=1.0, normalizer=normalizer)


def _bhattacharyya_factory(*, normalizer: str = "exact") -> Callable[..., Pairwise]:
    """B-vMF (D3): the PPK of order 1/2 (log Bhattacharyya coefficient)."""
    return _vmf_kernel_factory("ppk", rho=0.5, normalizer=normalizer)


def _ppk_factory(*, rho: float = 1.0, normalizer: str = "exact") -> Callable[..., Pairwise]:
    return _vmf_kernel_factory("ppk", rho=rho, normalizer=normalizer)


def _kl_factory(*, normalizer: str = "exact", reference_sign: bool = False) -> Callable[..., Pairwise]:
    return _vmf_kernel_factory("kl", normalizer=normalizer, reference_sign=reference_sign)


def _loglik_factory(*, normalizer: str = "exact") -> Callable[..., Pairwise]:
    return _vmf_kernel_factory("loglik", normalizer=normalizer)


# The official EL-nivMF computation (specs/nivmf.md sections 2, 8: C1, C3, C4, C5).
EL_NIVMF_COMPAT_PRESET = {
    "nivmf_form": "reference_linear",
    "estimator": "monte_carlo",
    "num_samples": 5,
    "temperature_inside": True,
    "normalizer": "reference_quadratic",
    "kappa_gradient": "proposal",
}


def _nivmf_factory(
    kernel: str,
    *,
    rho: float = 1.0,
    nivmf_form: str = "reference_linear",
    estimator: str = "auto",
    num_samples: int = 10,
    temperature_inside: bool = False,
    normalizer: str = "exact",
    kappa_gradient: str = "implicit",
    compat: bool = False,
) -> Callable[..., Pairwise]:
    options = dict(nivmf_form=nivmf_form, estimator=estimator, num_samples=num_samples,
                   temperature_inside=temperature_inside, normalizer=normalizer, kappa_gradient=kappa_gradient)
    if compat:
        options.update(EL_NIVMF_COMPAT_PRESET)
    form, est = options["nivmf_form"], options["estimator"]
    _check_choice("nivmf_form", form, NIVMF_FORMS)
    _check_choice("estimator", est, EL_ESTIMATORS)
    _check_choice("normalizer", options["normalizer"], NORMALIZERS)
    _check_choice("kappa_gradient", options["kappa_gradient"], KAPPA_GRADIENTS)
    has_closed_form = form == "reference_linear" and kernel in ("ppk", "kl")
    if est == "closed_form" and not has_closed_form:
        raise ConfigError(f"{kernel} with nivmf_form={form!r} has no closed form; use estimator='monte_carlo' "
                          f"(closed forms exist for nivmf_form='reference_linear')")
    use_mc = kernel in ("ppk", "kl") and (est == "monte_carlo" or not has_closed_form)
    n = options["num_samples"]
    if use_mc and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"num_samples must be an int >= 1, got {n!r}")
    if not rho > 0:
        raise ConfigError(f"rho must be > 0, got {rho!r}")
    t_inside = bool(options["temperature_inside"])
    norm = options["normalizer"]

    def pairwise(a: Bundle, b: Bundle, *, key: Array | None = None, temperature=None) -> Pairwise:
        name = f"{kernel}_nivmf"
        e, v, kappas = a["embedding"], b["embedding"], _proxy_kappa(b, "kappas", name)
        t = 1.0 if temperature is None or not t_inside else temperature
        if kernel in ("ppk", "kl") and use_mc:
            if key is None:
                raise ValueError(f"similarity {name!r} with a Monte Carlo estimator needs a PRNG key")
            samples = vmf_samples(key, e, n, options["kappa_gradient"])
            if kernel == "kl":
                s = nivmf_neg_kl_monte_carlo(samples, e, v, kappas, form=form, normalizer=norm)
            else:
                s = nivmf_ppk_monte_carlo(samples, e, v, kappas, rho=rho, form=form, temperature=t,
                                          normalizer=norm)
        elif kernel == "kl":
            s = nivmf_neg_kl_closed_form(e, v, kappas, normalizer=norm)
        elif kernel == "ppk" and rho == 1.0:
            s = el_nivmf_closed_form(e, v, kappas, temperature=t, normalizer=norm)
        elif kernel == "ppk":
            if t_inside:
                raise ConfigError("temperature_inside applies to the EL kernel (rho = 1) only")
            s = nivmf_ppk_closed_form(e, v, kappas, rho=rho, normalizer=norm)
        elif kernel == "loglik":
            s = nivmf_log_density_matrix(l2_normalize(e), v, kappas, form=form, normalizer=norm)
        else:
            w, _ = nivmf_parameters(v, kappas, norm)
            s = -sq_euclidean(e, w) if kernel == "l2" else cosine(e, w)
            return Pairwise(s, safe_sqrt(-s) if kernel == "l2" else chord_distance(s))
        return Pairwise(s, -s)

    return pairwise


def _el_nivmf_factory(*, nivmf_form: str = "reference_linear", estimator: str = "auto", num_samples: int = 10,
                      temperature_inside: bool = False, normalizer: str = "exact", kappa_gradient: str = "implicit",
                      compat: bool = False) -> Callable[..., Pairwise]:
    """EL-nivMF (D6): log E_{x ~ vMF(e)}[nivMF_c(x)] (or, temperature inside, log E[nivMF_c(x)^(1/T)],
    already divided by T). `estimator='auto'`: the closed form for nivmf_form='reference_linear', Monte
    Carlo with `num_samples` draws per image (shared by all proxies) otherwise. `compat=True` applies
    EL_NIVMF_COMPAT_PRESET (the official computation)."""
    return _nivmf_factory("ppk", rho=1.0, nivmf_form=nivmf_form, estimator=estimator, num_samples=num_samples,
                          temperature_inside=temperature_inside, normalizer=normalizer,
                          kappa_gradient=kappa_gradient, compat=compat)


def _ppk_nivmf_factory(*, rho: float = 0.5, nivmf_form: str = "reference_linear", estimator: str = "auto",
                       num_samples: int = 10, normalizer: str = "exact",
                       kappa_gradient: str = "implicit") -> Callable[..., Pairwise]:
    """PPK_rho vMF-nivMF (D7; rho = 1/2: Bhattacharyya); closed form for reference_linear, else MC."""
    return _nivmf_factory("ppk", rho=rho, nivmf_form=nivmf_form, estimator=estimator, num_samples=num_samples,
                          normalizer=normalizer, kappa_gradient=kappa_gradient)


def _bhattacharyya_nivmf_factory(*, nivmf_form: str = "reference_linear", estimator: str = "auto",
                                 num_samples: int = 10, normalizer: str = "exact",
                                 kappa_gradient: str = "implicit") -> Callable[..., Pairwise]:
    return _ppk_nivmf_factory(rho=0.5, nivmf_form=nivmf_form, estimator=estimator, num_samples=num_samples,
                              normalizer=normalizer, kappa_gradient=kappa_gradient)


def _kl_nivmf_factory(*, nivmf_form: str = "reference_linear", estimator: str = "auto", num_samples: int = 10,
                      normalizer: str = "exact", kappa_gradient: str = "implicit") -> Callable[..., Pairwise]:
    """-KL(vMF(e) || nivMF_c) (D7); closed form for reference_linear, else MC."""
    return _nivmf_factory("kl", nivmf_form=nivmf_form, estimator=estimator, num_samples=num_samples,
                          normalizer=normalizer, kappa_gradient=kappa_gradient)


def _loglik_nivmf_factory(*, nivmf_form: str = "stretched", normalizer: str = "exact") -> Callable[..., Pairwise]:
    """log nivMF_c(mu_i): the image mode under the proxy (D5; the official point loss uses 'stretched')."""
    return _nivmf_factory("loglik", nivmf_form=nivmf_form, normalizer=normalizer)


def _l2_nivmf_factory() -> Callable[..., Pairwise]:
    """-|e_i - w_c|^2 with the proxy point w_c = K_c mu_c."""
    return _nivmf_factory("l2")


def _cosine_nivmf_factory() -> Callable[..., Pairwise]:
    """cos(e_i, w_c) with the proxy point w_c = K_c mu_c."""
    return _nivmf_factory("cosine")


SIMILARITIES: dict[str, Callable[..., Callable[..., Pairwise]]] = {
    "cosine": _cosine_factory,
    "dot": _dot_factory,
    "l2": _l2_factory,
    "introspective": _introspective_factory,
    "elk": _elk_factory,
    "bhattacharyya": _bhattacharyya_factory,
    "ppk": _ppk_factory,
    "kl": _kl_factory,
    "loglik": _loglik_factory,
    "l2_vmf": _l2_factory,
    "el_nivmf": _el_nivmf_factory,
    "bhattacharyya_nivmf": _bhattacharyya_nivmf_factory,
    "ppk_nivmf": _ppk_nivmf_factory,
    "kl_nivmf": _kl_nivmf_factory,
    "loglik_nivmf": _loglik_nivmf_factory,
    "l2_nivmf": _l2_nivmf_factory,
    "cosine_nivmf": _cosine_nivmf_factory,
}

# Similarities whose values lie in [-1, 1] (what angular-margin losses such as ArcFace need).
BOUNDED_SIMILARITIES = frozenset({"cosine", "introspective"})

# Similarities that read proxy concentrations: 'scalar' = bundle['kappa'] [M], 'vector' = bundle['kappas'] [M, D].
PROXY_CONCENTRATION: dict[str, str] = {
    **{name: "scalar" for name in ("elk", "bhattacharyya", "ppk", "kl", "loglik", "l2_vmf")},
    **{name: "vector" for name in ("el_nivmf", "bhattacharyya_nivmf", "ppk_nivmf", "kl_nivmf", "loglik_nivmf",
                                   "l2_nivmf", "cosine_nivmf")},
}

# Similarities that, for some options, apply the softmax temperature themselves (S = s / T computed
# inside, e.g. the reference EL-nivMF log-mean-exp): name -> predicate on the options dict.
TEMPERATURE_INSIDE: dict[str, Callable[[dict], bool]] = {
    "el_nivmf": lambda o: bool(o.get("compat", False) or o.get("temperature_inside", False)),
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
