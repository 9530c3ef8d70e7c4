"""Pairwise similarities between two sets of embeddings, each an [N, M] matrix.

Modules, one family each (lower ones never import higher ones):

    basic                cosine, dot, (negative) squared Euclidean, chord distance; the Pairwise type
    idml                 IDML's introspective metric (docs/methods/idml.md)
    vmf                  kernels between isotropic vMFs: PPK / EL / Bhattacharyya, KL, log-likelihood
    nivmf                nivMF proxy log densities and their PPK / KL kernels, closed form and Monte Carlo
    expected_likelihood  EL-nivMF, closed form and Monte Carlo, and its compat preset (docs/methods/nivmf.md)
    bundles              bundle conventions and the bundle-level kernels of the registry
    registry             get_similarity, SIMILARITIES (one declarative row per name), option validation

Every registered similarity comes with the distance its pair losses (contrastive, triplet, margin,
FastAP and the triplet miners) use; higher similarity means lower distance:

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
same comparisons against nivMF / vMF proxies (the Figure-5 grid of docs/methods/nivmf.md); their distance
is -s, or the chord / Euclidean distance for cosine_nivmf / l2_*. Images are vMF(mu = e/|e|, kappa = |e|);
references take their concentration from 'kappa' / 'kappas' when present. The kernels are log-values in
nats, so margins of distance losses on them are in nats.
"""

from probdml.similarity.basic import (
    Pairwise,
    chord_distance,
    cosine,
    dot,
    l2_normalize,
    neg_sq_euclidean,
    safe_sqrt,
    sq_euclidean,
)
from probdml.similarity.idml import (
    ALPHA_MODES,
    BETA_FORMS,
    ISM_COMPAT_PRESET,
    ISM_FORMS,
    ISMTerms,
    introspective,
    introspective_beta,
    introspective_distance,
    introspective_terms,
    ism_decay,
)
from probdml.similarity.vmf import NORMALIZERS, log_normalizer, ppk, vmf_kl, vmf_loglik
from probdml.similarity.nivmf import (
    KAPPA_GRADIENTS,
    NIVMF_FORMS,
    nivmf_natural_parameters,
    nivmf_neg_kl,
    nivmf_neg_kl_monte_carlo,
    nivmf_pairwise_log_prob,
    nivmf_ppk,
    nivmf_ppk_monte_carlo,
    vmf_samples,
)
from probdml.similarity.expected_likelihood import (
    EL_ESTIMATORS,
    EL_NIVMF_COMPAT_PRESET,
    TEMPERATURE_PLACEMENTS,
    el_nivmf,
    el_nivmf_closed_form,
    el_nivmf_monte_carlo,
)
from probdml.similarity.bundles import (
    NIVMF_KAPPA_FLOOR,
    Bundle,
    natural_parameter,
    nivmf_parameters,
    vmf_parameters,
)
from probdml.similarity.registry import (
    BOUNDED_SIMILARITIES,
    PROXY_CONCENTRATION,
    SIMILARITIES,
    TEMPERATURE_INSIDE,
    Conflict,
    Spec,
    get_similarity,
    resolve_options,
    similarity_options,
)

__all__ = [
    "ALPHA_MODES", "BETA_FORMS", "BOUNDED_SIMILARITIES", "Bundle", "Conflict", "EL_ESTIMATORS",
    "EL_NIVMF_COMPAT_PRESET", "ISMTerms", "ISM_COMPAT_PRESET", "ISM_FORMS", "KAPPA_GRADIENTS", "NIVMF_FORMS",
    "NIVMF_KAPPA_FLOOR", "NORMALIZERS", "PROXY_CONCENTRATION", "Pairwise", "SIMILARITIES", "Spec",
    "TEMPERATURE_INSIDE", "TEMPERATURE_PLACEMENTS", "chord_distance", "cosine", "dot", "el_nivmf",
    "el_nivmf_closed_form", "el_nivmf_monte_carlo", "get_similarity", "introspective", "introspective_beta",
    "introspective_distance", "introspective_terms", "ism_decay", "l2_normalize", "log_normalizer",
    "natural_parameter", "neg_sq_euclidean", "nivmf_natural_parameters", "nivmf_neg_kl",
    "nivmf_neg_kl_monte_carlo", "nivmf_pairwise_log_prob", "nivmf_parameters", "nivmf_ppk",
    "nivmf_ppk_monte_carlo", "ppk", "resolve_options", "safe_sqrt", "similarity_options", "sq_euclidean",
    "vmf_kl", "vmf_loglik", "vmf_parameters", "vmf_samples",
]
