"""Bundle conventions and the bundle-level kernels that the registry table (probdml.similarity.registry)
names: each `*_pair(a, b, **options)` reads two embedding bundles and returns Pairwise [N, M].

    image vMF           mu = e/|e|, kappa = bundle['kappa'] if present else |e|
    natural parameter   kappa e/|e| for a bundle with 'kappa', else e; `dot` and `l2` compare these, so
                        a vMF proxy (mu_c, kappa_c) is the point kappa_c mu_c
    nivMF proxy         mu = e/|e|, K = diag(bundle['kappas']); without 'kappas', kappas = max(kappa, 1e-6)
    uncertainty         bundle.get('uncertainty'); absent = certain (class proxies in IDML)

Distances: the chord sqrt(2 - 2 s) for cosines, |x - y| for the Euclidean kernels and -s for the
log-kernels (nats), so that higher similarity always means lower distance.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from probdml.similarity.basic import (
    Pairwise,
    chord_distance,
    cosine,
    dot,
    l2_normalize,
    safe_sqrt,
    sq_euclidean,
)
from probdml.similarity.expected_likelihood import el_nivmf
from probdml.similarity.idml import introspective
from probdml.similarity.nivmf import (
    nivmf_natural_parameters,
    nivmf_neg_kl,
    nivmf_neg_kl_monte_carlo,
    nivmf_pairwise_log_prob,
    nivmf_ppk,
    nivmf_ppk_monte_carlo,
    vmf_samples,
)
from probdml.similarity.vmf import ppk, vmf_kl, vmf_loglik

Array = jax.Array
Bundle = Mapping[str, Array]

# Floor of the per-axis concentrations of an isotropic bundle read as nivMF (log det K = p log kappa).
NIVMF_KAPPA_FLOOR = 1e-6


def vmf_parameters(bundle: Bundle) -> tuple[Array, Array]:
    """(mu [N, D], kappa [N]) of a bundle: mu = e/|e|, kappa = bundle['kappa'] or |e| (zero rows: 0, 0)."""
    e = bundle["embedding"]
    mu = l2_normalize(e)
    kappa = bundle["kappa"] if "kappa" in bundle else safe_sqrt(jnp.sum(e * e, axis=-1))
    return mu, kappa


def natural_parameter(bundle: Bundle) -> Array:
    """kappa * e / |e| for a bundle with 'kappa' [N] (a vMF given by direction and concentration), else e."""
    if "kappa" in bundle:
        return bundle["kappa"][:, None] * l2_normalize(bundle["embedding"])
    return bundle["embedding"]


def isotropic_parameters(bundle: Bundle) -> tuple[Array, Array]:
    """`vmf_parameters` of a bundle that must not carry per-axis 'kappas'."""
    if "kappas" in bundle:
        raise ValueError("this kernel compares isotropic vMFs; the bundle has per-axis 'kappas' (use el_nivmf or "
                         "loglik_nivmf)")
    return vmf_parameters(bundle)


def nivmf_parameters(bundle: Bundle) -> tuple[Array, Array]:
    """(mu, kappas [M, D]); a bundle without 'kappas' is isotropic, kappas = max(kappa, 1e-6) * 1."""
    if "kappas" in bundle:
        return l2_normalize(bundle["embedding"]), bundle["kappas"]
    mu, kappa = vmf_parameters(bundle)
    return mu, jnp.maximum(kappa, NIVMF_KAPPA_FLOOR)[:, None] * jnp.ones_like(mu)


def _log_kernel(sim: Array) -> Pairwise:
    return Pairwise(sim, -sim)


def _cosine(x: Array, y: Array) -> Pairwise:
    sim = cosine(x, y)
    return Pairwise(sim, chord_distance(sim))


def _euclidean(x: Array, y: Array) -> Pairwise:
    sq = sq_euclidean(x, y)
    return Pairwise(-sq, safe_sqrt(sq))


def _samples(key: Array | None, a: Bundle, num_samples: int, kappa_gradient: str, name: str) -> Array:
    if key is None:
        raise ValueError(f"{name} with estimator='monte_carlo' needs a PRNG key")
    return vmf_samples(key, *vmf_parameters(a), int(num_samples), kappa_gradient)


def cosine_pair(a: Bundle, b: Bundle) -> Pairwise:
    """cos(e_i, e_j), chord distance."""
    return _cosine(a["embedding"], b["embedding"])


def dot_pair(a: Bundle, b: Bundle) -> Pairwise:
    """<n_i, n_j> of the natural parameters, distance -s."""
    return _log_kernel(dot(natural_parameter(a), natural_parameter(b)))


def l2_pair(a: Bundle, b: Bundle, *, normalize: bool) -> Pairwise:
    """-|n_i - n_j|^2 of the natural parameters (L2-normalised first if `normalize`), distance |n_i - n_j|."""
    x, y = natural_parameter(a), natural_parameter(b)
    if normalize:
        x, y = l2_normalize(x), l2_normalize(y)
    return _euclidean(x, y)


def introspective_pair(a: Bundle, b: Bundle, **options) -> Pairwise:
    """The introspective metric (s_IN, D_IN) with each bundle's 'uncertainty' (absent = certain)."""
    return introspective(a["embedding"], b["embedding"], a.get("uncertainty"), b.get("uncertainty"), **options)


def ppk_pair(a: Bundle, b: Bundle, *, rho: float, normalizer: str) -> Pairwise:
    """log PPK_rho of two isotropic vMF bundles."""
    return _log_kernel(ppk(*isotropic_parameters(a), *isotropic_parameters(b), rho=rho, normalizer=normalizer))


def kl_pair(a: Bundle, b: Bundle, *, reference_sign: bool, exact_mean_length: bool, normalizer: str) -> Pairwise:
    """s = -KL(image || reference); `reference_sign=True` uses +KL (the official criterion's sign)."""
    kl = vmf_kl(*isotropic_parameters(a), *isotropic_parameters(b), normalizer=normalizer,
                exact_mean_length=exact_mean_length)
    return _log_kernel(kl if reference_sign else -kl)


def loglik_pair(a: Bundle, b: Bundle, *, normalizer: str) -> Pairwise:
    """log vMF(mu_i; mu_j, kappa_j) of the image direction under the reference vMF."""
    mu_a, _ = isotropic_parameters(a)
    return _log_kernel(vmf_loglik(mu_a, *isotropic_parameters(b), normalizer=normalizer))


def loglik_nivmf_pair(a: Bundle, b: Bundle, *, form: str, normalizer: str) -> Pairwise:
    """log nivMF(mu_i; mu_j, K_j) of the image direction under the nivMF proxy."""
    return _log_kernel(nivmf_pairwise_log_prob(l2_normalize(a["embedding"]), *nivmf_parameters(b), form=form,
                                               normalizer=normalizer))


def el_nivmf_pair(a: Bundle, b: Bundle, *, key: Array | None, temperature: float | Array | None, form: str,
                  estimator: str, num_samples: int, temperature_placement: str, normalizer: str,
                  kappa_gradient: str) -> Pairwise:
    """EL-nivMF log E_{x ~ vMF_i}[nivMF_j(x)^(1/T')] (probdml.similarity.expected_likelihood)."""
    return _log_kernel(el_nivmf(
        *vmf_parameters(a), *nivmf_parameters(b), form=form, estimator=estimator, num_samples=int(num_samples),
        temperature=1.0 if temperature is None else temperature, temperature_placement=temperature_placement,
        normalizer=normalizer, key=key, kappa_gradient=kappa_gradient))


def ppk_nivmf_pair(a: Bundle, b: Bundle, *, key: Array | None, rho: float, form: str, estimator: str,
                   num_samples: int, normalizer: str, kappa_gradient: str) -> Pairwise:
    """log PPK_rho(vMF_i, nivMF_j), closed form (reference_linear) or Monte Carlo."""
    mu_a, kappa_a = vmf_parameters(a)
    if estimator == "closed_form":
        return _log_kernel(nivmf_ppk(mu_a, kappa_a, *nivmf_parameters(b), rho=rho, normalizer=normalizer))
    x = _samples(key, a, num_samples, kappa_gradient, "ppk_nivmf")
    return _log_kernel(nivmf_ppk_monte_carlo(x, mu_a, kappa_a, *nivmf_parameters(b), rho=rho, form=form,
                                             normalizer=normalizer))


def kl_nivmf_pair(a: Bundle, b: Bundle, *, key: Array | None, form: str, estimator: str, num_samples: int,
                  normalizer: str, kappa_gradient: str) -> Pairwise:
    """-KL(vMF_i || nivMF_j), closed form (reference_linear) or Monte Carlo."""
    mu_a, kappa_a = vmf_parameters(a)
    if estimator == "closed_form":
        return _log_kernel(nivmf_neg_kl(mu_a, kappa_a, *nivmf_parameters(b), normalizer=normalizer))
    x = _samples(key, a, num_samples, kappa_gradient, "kl_nivmf")
    return _log_kernel(nivmf_neg_kl_monte_carlo(x, mu_a, kappa_a, *nivmf_parameters(b), form=form,
                                                normalizer=normalizer))


def l2_nivmf_pair(a: Bundle, b: Bundle) -> Pairwise:
    """-|e_i - w_j|^2 with the nivMF proxy's point w_j = K_j mu_j."""
    return _euclidean(a["embedding"], nivmf_natural_parameters(*nivmf_parameters(b))[0])


def cosine_nivmf_pair(a: Bundle, b: Bundle) -> Pairwise:
    """cos(e_i, w_j) with the nivMF proxy's point w_j = K_j mu_j, chord distance."""
    return _cosine(a["embedding"], nivmf_natural_parameters(*nivmf_parameters(b))[0])
