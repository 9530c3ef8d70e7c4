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


SIMILARITIES: dict[str, Callable[..., Callable[..., Pairwise]]] = {
    "cosine": _cosine_factory,
    "dot": _dot_factory,
    "l2": _l2_factory,
    "introspective": _introspective_factory,
}

# Similarities whose values lie in [-1, 1] (what angular-margin losses such as ArcFace need).
BOUNDED_SIMILARITIES = frozenset({"cosine", "introspective"})

# Similarities that read proxy concentrations: 'scalar' = bundle['kappa'] [M], 'vector' = bundle['kappas'] [M, D].
PROXY_CONCENTRATION: dict[str, str] = {}

# Similarities that, for some options, apply the softmax temperature themselves (S = s / T computed
# inside, e.g. the reference EL-nivMF log-mean-exp): name -> predicate on the options dict.
TEMPERATURE_INSIDE: dict[str, Callable[[dict], bool]] = {}


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
