"""The similarity registry: names from a config -> functions of two embedding bundles.

A bundle is a dict with 'embedding' [N, D] and optionally 'uncertainty' [N, Du] (IDML), 'kappa' [N]
(an isotropic vMF concentration, e.g. of a class proxy) or 'kappas' [N, D] (nivMF proxy concentrations).
Bundle conventions:

    image vMF           mu = e/|e|, kappa = |e| (or bundle['kappa'] when present)
    natural parameter   kappa e/|e| with 'kappa', else e (what `dot`, `l2` and `l2_vmf` compare)
    nivMF proxy         mu = e/|e|, K = diag(kappas); a bundle without 'kappas' reads as
                        kappas = max(kappa, 1e-6) on every axis
    uncertainty         absent = certain (u = 0): class proxies in the introspective metric

`get_similarity(name, **options)` returns f(bundle_a, bundle_b, *, key=None, temperature=None) ->
Pairwise(similarity, distance) [N, M]. Each entry of SIMILARITIES is one row of a declarative table
(`Spec`): the kernel (bundles -> Pairwise), its options with defaults, the valid choices and positive
options, option pairs that contradict each other, and the `compat` preset. `resolve_options` validates
once, for every entry: unknown options, bad choices, non-positive values, contradictory pairs and
`compat=True` together with an explicit value the preset would override all raise a one-line
ConfigError (naming both options for a contradiction).

Inputs (`check_bundles`): each bundle's 'embedding' must be a non-empty floating [N, D] (and [M, D] with
the same D), 'kappa' [N], 'kappas' [N, D], 'uncertainty' N rows; a one-line ValueError names the bundle
field otherwise. Concrete inputs with a NaN or inf are an error; under jit, a non-finite input row gives
NaN similarities and distances in its row or column, never a finite number (`probdml.checks`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from probdml import checks
from probdml.errors import ConfigError, unknown_choice
from probdml.similarity import bundles
from probdml.similarity.idml import ALPHA_MODES, BETA_FORMS, ISM_COMPAT_PRESET, ISM_FORMS
from probdml.similarity.expected_likelihood import (
    EL_ESTIMATORS,
    EL_NIVMF_COMPAT_PRESET,
    TEMPERATURE_PLACEMENTS,
)
from probdml.similarity.nivmf import KAPPA_GRADIENTS, NIVMF_FORMS
from probdml.similarity.vmf import NORMALIZERS
from probdml.similarity.basic import Pairwise

Array = jax.Array


@dataclass(frozen=True)
class Conflict:
    """Options `first` and `second` contradict each other when `applies(options)`; `reason` says why."""

    first: str
    second: str
    applies: Callable[[Mapping[str, Any]], bool]
    reason: str


@dataclass(frozen=True)
class Spec:
    """One registry row. `options`: the user-facing options with their defaults; `fixed`: options the
    kernel receives but the user cannot set (e.g. rho = 1/2 for 'bhattacharyya'); `choices`: option ->
    valid values; `positive`: options that must be > 0; `compat`: the preset `compat=True` applies;
    `concentration`: the proxy concentration it reads ('scalar' = 'kappa' [M], 'vector' = 'kappas'
    [M, D]); `bounded`: values in [-1, 1]; `temperature`: the option whose value 'inside' makes the
    kernel apply the softmax temperature itself."""

    kernel: Callable[..., Pairwise]
    options: Mapping[str, Any] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    positive: tuple[str, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    compat: Mapping[str, Any] | None = None
    concentration: str | None = None
    bounded: bool = False
    temperature: str | None = None


def _closed_form_needs_linear(o: Mapping[str, Any]) -> bool:
    return o["estimator"] == "closed_form" and o["form"] != "reference_linear"


_LINEAR_ONLY = Conflict("estimator", "form", _closed_form_needs_linear,
                        "the closed form exists only for form='reference_linear'; set estimator='monte_carlo'")

_NORMALIZER = {"normalizer": NORMALIZERS}
_SAMPLED = {"form": "reference_linear", "estimator": "closed_form", "num_samples": 20, "normalizer": "exact",
            "kappa_gradient": "implicit"}
_SAMPLED_CHOICES = {"form": NIVMF_FORMS, "estimator": EL_ESTIMATORS, "normalizer": NORMALIZERS,
                    "kappa_gradient": KAPPA_GRADIENTS}

SIMILARITIES: dict[str, Spec] = {
    "cosine": Spec(bundles.cosine_pair, bounded=True),
    "dot": Spec(bundles.dot_pair),
    "l2": Spec(bundles.l2_pair, {"normalize": False}),
    "introspective": Spec(
        bundles.introspective_pair,
        {"alpha_mode": "cos", "beta_form": "sumvec", "ism_form": "relative", "tau": 5.0, "beta_offset": 0.0,
         "uncertainty_l2norm": False, "alpha_eps": 1e-6, "compat": False},
        choices={"alpha_mode": ALPHA_MODES, "beta_form": BETA_FORMS, "ism_form": ISM_FORMS},
        positive=("tau",), compat=ISM_COMPAT_PRESET, bounded=True),
    "ppk": Spec(bundles.ppk_pair, {"rho": 1.0, "normalizer": "exact"}, choices=_NORMALIZER, positive=("rho",),
                concentration="scalar"),
    "el": Spec(bundles.ppk_pair, {"normalizer": "exact"}, {"rho": 1.0}, _NORMALIZER, concentration="scalar"),
    "bhattacharyya": Spec(bundles.ppk_pair, {"normalizer": "exact"}, {"rho": 0.5}, _NORMALIZER,
                          concentration="scalar"),
    "kl": Spec(bundles.kl_pair, {"reference_sign": False, "exact_mean_length": True, "normalizer": "exact"},
               choices=_NORMALIZER, concentration="scalar"),
    "loglik": Spec(bundles.loglik_pair, {"normalizer": "exact"}, choices=_NORMALIZER, concentration="scalar"),
    "loglik_nivmf": Spec(bundles.loglik_nivmf_pair, {"form": "exact", "normalizer": "exact"},
                         choices={"form": NIVMF_FORMS, "normalizer": NORMALIZERS}, concentration="vector"),
    "el_nivmf": Spec(
        bundles.el_nivmf_pair, {**_SAMPLED, "temperature_placement": "outside", "compat": False},
        choices={**_SAMPLED_CHOICES, "temperature_placement": TEMPERATURE_PLACEMENTS},
        positive=("num_samples",), conflicts=(_LINEAR_ONLY,), compat=EL_NIVMF_COMPAT_PRESET,
        concentration="vector", temperature="temperature_placement"),
    "l2_vmf": Spec(bundles.l2_pair, {"normalize": False}, concentration="scalar"),
    "ppk_nivmf": Spec(bundles.ppk_nivmf_pair, {"rho": 0.5, **_SAMPLED}, choices=_SAMPLED_CHOICES,
                      positive=("rho", "num_samples"), conflicts=(_LINEAR_ONLY,), concentration="vector"),
    "bhattacharyya_nivmf": Spec(bundles.ppk_nivmf_pair, _SAMPLED, {"rho": 0.5}, _SAMPLED_CHOICES,
                                ("num_samples",), (_LINEAR_ONLY,), concentration="vector"),
    "kl_nivmf": Spec(bundles.kl_nivmf_pair, _SAMPLED, choices=_SAMPLED_CHOICES, positive=("num_samples",),
                     conflicts=(_LINEAR_ONLY,), concentration="vector"),
    "l2_nivmf": Spec(bundles.l2_nivmf_pair, concentration="vector"),
    "cosine_nivmf": Spec(bundles.cosine_nivmf_pair, concentration="vector"),
}


def _spec(name: str) -> Spec:
    if name not in SIMILARITIES:
        raise unknown_choice("similarity", name, SIMILARITIES)
    return SIMILARITIES[name]


def similarity_options(name: str) -> tuple[str, ...]:
    """The option names `get_similarity(name, **options)` accepts."""
    return tuple(_spec(name).options)


def resolve_options(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every option of similarity `name` as `get_similarity(name, **options)` uses it: defaults filled
    in and the `compat` preset applied (the 'compat' key itself dropped). Raises a one-line ConfigError
    for an unknown name or option, a value outside its choices, a non-positive value that must be
    positive, and two options that contradict each other (naming both)."""
    spec = _spec(name)
    given = dict(options or {})
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        valid = ", ".join(spec.options) if spec.options else "(none)"
        raise ConfigError(f"similarity {name!r} has no option(s) {', '.join(unknown)}; valid options: {valid}")
    resolved = {**spec.options, **given}
    if resolved.pop("compat", False):
        for option, value in spec.compat.items():
            if option in given and given[option] != value:
                raise ConfigError(f"similarity {name!r}: compat=True sets {option}={value!r}, which contradicts "
                                  f"the explicit {option}={given[option]!r}; drop one of the two")
        resolved.update(spec.compat)
    for option, valid in spec.choices.items():
        if resolved[option] not in valid:
            raise unknown_choice(f"{name} {option}", resolved[option], valid)
    for option in spec.positive:
        if not resolved[option] > 0:
            raise ConfigError(f"similarity {name!r}: {option} must be > 0, got {resolved[option]!r}")
    for c in spec.conflicts:
        if c.applies(resolved):
            raise ConfigError(f"similarity {name!r}: {c.first}={resolved[c.first]!r} contradicts "
                              f"{c.second}={resolved[c.second]!r}: {c.reason}")
    return resolved


def get_similarity(name: str, **options) -> Callable[..., Pairwise]:
    """The registered similarity `name` with its options, as a function
    (bundle_a, bundle_b, *, key=None, temperature=None) -> Pairwise. `key` feeds Monte Carlo estimates;
    `temperature` is read only by similarities listed in TEMPERATURE_INSIDE (others ignore both).

    Unknown names or options and contradictory options raise probdml.errors.ConfigError.
    """
    spec = _spec(name)
    bound = {**resolve_options(name, options), **spec.fixed}
    reads = {"key", "temperature"} & set(inspect.signature(spec.kernel).parameters)

    def pairwise(a: Mapping[str, Array], b: Mapping[str, Array], *, key: Array | None = None,
                 temperature: float | Array | None = None) -> Pairwise:
        check_bundles(name, a, b)
        runtime = {"key": key, "temperature": temperature}
        out = spec.kernel(a, b, **{k: runtime[k] for k in reads}, **bound)
        bad = _nonfinite(a)[:, None] | _nonfinite(b)[None, :]
        return Pairwise(*(jnp.where(bad, jnp.nan, m) for m in out))

    return pairwise


BUNDLE_FIELDS = ("embedding", "kappa", "kappas", "uncertainty")


def check_bundles(name: str, a: Mapping[str, Array], b: Mapping[str, Array]) -> None:
    """Shapes and dtypes of two bundles (module docstring); values too when they are concrete."""
    where = f"similarity {name!r}"
    for arg, bundle, n in (("a", a, "N"), ("b", b, "M")):
        if not isinstance(bundle, Mapping) or "embedding" not in bundle:
            raise ValueError(f"{where}: {arg} must be a bundle {{'embedding': [{n}, D], ...}}, got {type(bundle).__name__}")
    d = checks.shape_of(a["embedding"])[1:2]
    for arg, bundle, n in (("a", a, "N"), ("b", b, "M")):
        checks.check_matrix(where, f"{arg}['embedding']", bundle["embedding"], f"[{n}, D]",
                            cols=d[0] if d and arg == "b" else None)
        rows = checks.shape_of(bundle["embedding"])[0]
        if "kappa" in bundle:
            checks.check_vector(where, f"{arg}['kappa']", bundle["kappa"], rows, f"[{n}]")
        if "kappas" in bundle:
            checks.check_matrix(where, f"{arg}['kappas']", bundle["kappas"], f"[{n}, D]", rows=rows,
                                cols=checks.shape_of(bundle["embedding"])[1])
        if "uncertainty" in bundle and checks.shape_of(bundle["uncertainty"])[:1] != (rows,):
            raise ValueError(f"{where}: {arg}['uncertainty'] must have {rows} rows ([{n}, Du]), "
                             f"got shape {checks.shape_of(bundle['uncertainty'])}")
        for field_name in BUNDLE_FIELDS:
            if field_name in bundle:
                checks.check_finite(where, f"{arg}[{field_name!r}]", bundle[field_name])


def _nonfinite(bundle: Mapping[str, Array]) -> Array:
    """[N] bool: rows of the bundle with a NaN or inf in any of its fields."""
    bad = checks.nonfinite_rows(bundle["embedding"])
    for field_name in BUNDLE_FIELDS[1:]:
        if field_name in bundle:
            bad = bad | checks.nonfinite_rows(jnp.reshape(bundle[field_name], (bad.shape[0], -1)))
    return bad


def _temperature_inside(name: str, options: Mapping[str, Any]) -> bool:
    return resolve_options(name, options)[SIMILARITIES[name].temperature] == "inside"


# Similarities whose values lie in [-1, 1] (what angular-margin losses such as ArcFace need).
BOUNDED_SIMILARITIES = frozenset(name for name, spec in SIMILARITIES.items() if spec.bounded)

# Similarities that read proxy concentrations: 'scalar' = bundle['kappa'] [M], 'vector' = bundle['kappas'] [M, D].
PROXY_CONCENTRATION: dict[str, str] = {
    name: spec.concentration for name, spec in SIMILARITIES.items() if spec.concentration
}

# Similarities that, for some options, apply the softmax temperature themselves (S = s / T computed
# inside, e.g. the official EL-nivMF log-mean-exp): name -> predicate on the options dict.
TEMPERATURE_INSIDE: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    name: functools.partial(_temperature_inside, name) for name, spec in SIMILARITIES.items() if spec.temperature
}
