"""EL-nivMF: the expected likelihood of a nivMF class proxy under an image vMF (documentation:
docs/methods/nivmf.md, "EL-nivMF"; estimator numerics: docs/numerics.md).

For an image vMF(mu_a, ka) and a proxy with reference_linear log density l_c(x) = a_c + w_c.x
(probdml.similarity.nivmf), at temperature T' (T' = T with the temperature 'inside', else 1):

    EL_c = log E_{x ~ vMF(mu_a, ka)}[exp(l_c(x) / T')]
         = a_c / T' + log C_p(ka) - log C_p(|ka mu_a + w_c / T'|)                  (closed form, exact)
         ~ log (1/n) sum_s exp(l_c(x_s) / T'),  x_s ~ vMF(mu_a, ka)                (Monte Carlo)

The closed form is the exact expected likelihood; the n-sample Monte Carlo estimate is Jensen-biased
low for small n (it estimates E[log mean], not log E). With the temperature inside, the softmax over
classes uses EL_c directly (the official code's logit, log E[nivMF^(1/T)]); outside, the loss divides
log E[nivMF] by T. Other forms (exact, stretched) have no closed form and need Monte Carlo.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from probdml import distributions
from probdml.similarity.basic import safe_sqrt
from probdml.similarity.nivmf import nivmf_constants, nivmf_pairwise_log_prob
from probdml.similarity.vmf import log_normalizer

Array = jax.Array

EL_ESTIMATORS = ("closed_form", "monte_carlo")
TEMPERATURE_PLACEMENTS = ("outside", "inside")

# The official EL-nivMF computation: 5-sample Monte Carlo of the reference_linear proxy with the
# temperature inside, the quadratic log C_p fit and the sampler's proposal kappa-gradient.
EL_NIVMF_COMPAT_PRESET = {
    "form": "reference_linear",
    "estimator": "monte_carlo",
    "num_samples": 5,
    "temperature_placement": "inside",
    "normalizer": "reference_quadratic",
    "kappa_gradient": "proposal",
}


def el_nivmf_closed_form(mu_a: Array, kappa_a: Array, mu_b: Array, kappas_b: Array, *,
                         temperature: float | Array = 1.0, normalizer: str = "exact") -> Array:
    """log E_{x ~ vMF(mu_a_i, ka_i)}[exp(l_j(x) / T)] for reference_linear proxies, exactly:
    a_j / T + log C_p(ka_i) - log C_p(|ka_i mu_a_i + w_j / T|)  [N, M], nats."""
    w, w_norm, const = nivmf_constants(mu_b, kappas_b, normalizer)
    log_c = log_normalizer(normalizer)
    p = mu_a.shape[-1]
    shift = w / temperature
    ka = kappa_a[:, None]
    shift_sq = jnp.sum(shift * shift, axis=-1)[None, :]
    r = safe_sqrt(ka * ka + shift_sq + 2.0 * ka * (mu_a @ shift.T))
    return (const - jnp.log(w_norm))[None, :] / temperature + log_c(kappa_a, p)[:, None] - log_c(r, p)


def el_nivmf_monte_carlo(samples: Array, mu_b: Array, kappas_b: Array, *, form: str = "reference_linear",
                         temperature: float | Array = 1.0, normalizer: str = "exact") -> Array:
    """log (1/n) sum_s exp(log nivMF_j(x_s) / T) over `samples` x_s [n, N, D] (shared by all proxies) [N, M]."""
    log_lik = nivmf_pairwise_log_prob(samples, mu_b, kappas_b, form=form, normalizer=normalizer) / temperature
    return jax.nn.logsumexp(log_lik, axis=0) - math.log(samples.shape[0])


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
    [N, M], with T' = T for `temperature_placement='inside'` (the official code's logit, which estimates
    log E[niv^(1/T)], not (1/T) log E[niv]) and T' = 1 for 'outside' (the loss then divides by T).

    closed_form (form 'reference_linear' only, whose exponent is linear in x): `el_nivmf_closed_form`.
    monte_carlo: `el_nivmf_monte_carlo` over n reparameterised samples x_s ~ vMF(mu_a, ka)
    (probdml.distributions.vmf_sample, shared by all proxies); Jensen-biased low for small n.
    `kappa_gradient`: the sampler's concentration gradient ('implicit', exact; 'proposal', the official).
    """
    if estimator not in EL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {EL_ESTIMATORS}, got {estimator!r}")
    if temperature_placement not in TEMPERATURE_PLACEMENTS:
        raise ValueError(
            f"temperature_placement must be one of {TEMPERATURE_PLACEMENTS}, got {temperature_placement!r}")
    t = temperature if temperature_placement == "inside" else 1.0
    if estimator == "closed_form":
        if form != "reference_linear":
            raise ValueError(f"the closed form exists only for form='reference_linear', not {form!r}; "
                             "use estimator='monte_carlo'")
        return el_nivmf_closed_form(mu_a, kappa_a, mu_b, kappas_b, temperature=t, normalizer=normalizer)
    if key is None:
        raise ValueError("el_nivmf with estimator='monte_carlo' needs a PRNG key")
    x = distributions.vmf_sample(key, mu_a, kappa_a, (num_samples,), kappa_gradient=kappa_gradient)  # [n, N, D]
    return el_nivmf_monte_carlo(x, mu_b, kappas_b, form=form, temperature=t, normalizer=normalizer)
