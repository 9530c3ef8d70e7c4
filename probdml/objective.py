"""The training objective: a similarity and a loss with their learnable parameters, built from config.

`build_objective(loss_cfg, num_classes, embed_dim)` returns an `Objective`:
- `init(key)` -> learnable loss parameters (a dict whose top-level keys are optimizer groups:
  'proxies' (class proxies / weights / centres), 'proxy_kappa' (vMF proxy concentrations),
  'temperature' (log T, or T with temperature_param='raw'), 'loss_params' (e.g. the margin loss's beta); the optimizer's `lr_mults` refer
  to these names); {} for losses without parameters;
- `apply(params, outputs, labels, key, state=None)` -> (scalar loss, dict of scalar aux metrics), where
  `outputs` is the model's output dict ('embedding' [B, D], optionally 'uncertainty' [B, Du]);
- for losses with a state carried between steps (the cross-batch memory, `memory_size` > 0; the dynamic
  soft margin loss's histogram): `init_state(like)` -> the initial state from the per-sample outputs'
  shapes; `update_state(state, outputs, labels)` -> the state with this batch enqueued, which `apply` then
  reads (pytorch-metric-learning's order), or None when `apply` itself returns the new state as
  aux['loss_state'] (the histogram, updated by the same computation as the loss); None otherwise.

Config (`loss_cfg`, an ml_collections.ConfigDict):
- `name`: a key of LOSSES; `similarity`: a key of probdml.similarity.SIMILARITIES (default 'cosine');
  `similarity_options`: a dict of that similarity's options (e.g. ISM `tau`, `beta_form`, `compat`);
- the loss's hyper-parameters, flat (`margin`, `alpha`, ...; see LOSS_DEFAULTS);
- `miner` (pair losses): 'none' or a key of MINERS, with its options flat (`miner_margin`, `epsilon`, ...);
- `memory_size` (pair losses of MEMORY_LOSSES): 0 (default, off) or M, the slots of a cross-batch memory
  (`probdml.losses.memory`): the batch is compared with the last M samples (itself included) instead of
  with itself only; the miner then must be one of MEMORY_MINERS.
Unknown names and keys raise probdml.errors.ConfigError listing the valid ones.

Proxy losses compare the batch with the class proxies (a bundle {'embedding': proxies} plus the proxy
concentrations 'kappa' [C] or 'kappas' [C, D] for the vMF kernels); pair losses compare the batch with
itself and use the similarity's `similarity` or `distance` matrix (probdml.similarity documents both).
Proxies are certain: they carry no 'uncertainty', which the introspective metric reads as u = 0.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from probdml import losses, mining, similarity
from probdml.errors import ConfigError, unknown_choice

Array = jax.Array


class Objective(NamedTuple):
    """A trainable loss: ``init(key) -> params``; ``apply(params, outputs, labels, key) -> (loss, aux)``.
    An objective with ``init_state`` is called with its state as a fifth argument and may return its new
    state as ``aux['loss_state']``; a stateless one is called with four, so its ``apply`` need not take a state."""

    init: Callable[[Array], dict]
    apply: Callable[[dict, dict, Array, Array], tuple[Array, dict]]
    # Optional: (params, train embeddings [N, D], labels [N]) -> params, run once before training.
    warm_start: Callable[[dict, Array, Array], dict] | None = None
    # Optional, for a state carried between steps (the cross-batch memory): like -> state, where `like` is
    # {output name: array or ShapeDtypeStruct [1, ...]}; and (state, outputs, labels) -> state.
    init_state: Callable[[dict], dict] | None = None
    update_state: Callable[[dict, dict, Array], dict] | None = None


def kaiming_normal_fan_out(key: Array, num_classes: int, dim: int) -> Array:
    """Proxies [C, D] ~ N(0, 2 / C): torch's kaiming_normal_(mode='fan_out') on a [C, D] tensor."""
    return jax.random.normal(key, (num_classes, dim)) * jnp.sqrt(2.0 / num_classes)


def standard_normal(key: Array, num_classes: int, dim: int) -> Array:
    """Proxies [C, D] ~ N(0, 1): pytorch-metric-learning's default weight init (torch.nn.init.normal_)."""
    return jax.random.normal(key, (num_classes, dim))


def kaiming_uniform_sqrt5(key: Array, num_rows: int, dim: int) -> Array:
    """Centres [R, D] ~ U(-1/sqrt(R), 1/sqrt(R)): torch's kaiming_uniform_(a=sqrt(5)) on a [D, R] tensor
    (SoftTriple's fc)."""
    bound = 1.0 / math.sqrt(num_rows)
    return jax.random.uniform(key, (num_rows, dim), minval=-bound, maxval=bound)


# ----------------------------------------------------------------------------------------------------
# Hyper-parameters: every loss's keys with defaults (IDML's wrappers / pytorch-metric-learning's defaults)

LOSS_DEFAULTS: dict[str, dict] = {
    "proxy_anchor": {"margin": 0.1, "alpha": 32.0},
    "proxy_nca": {"scale": 64.0},
    "proxy_nca_pp": {
        "temperature": 1.0 / 9.0,
        "learn_temperature": False,
        "temperature_param": "log",
        "subsample": 1.0,
        "guidance_weight": 0.0,
        "guidance_alpha": 32.0,
        "guidance_margin": 0.1,
        "guidance_positives": "columns",
    },
    "normalized_softmax": {"temperature": 0.05},
    "arcface": {"margin": 28.6, "scale": 64.0},
    "soft_triple": {"centers_per_class": 10, "la": 20.0, "gamma": 0.1, "margin": 0.01},
    "contrastive": {"pos_margin": 0.0, "neg_margin": 0.5},
    "triplet": {"margin": 0.1},
    "margin": {"margin": 0.2, "beta": 1.2, "learn_beta": True, "beta_per_class": False, "nu": 0.0},
    "multi_similarity": {"alpha": 2.0, "beta": 50.0, "base": 0.5},
    "npair": {},
    "fast_ap": {"num_bins": 10, "histogram_max": 4.0, "distance_power": 2.0},
}

# Catalogue losses built from probdml.losses.LOSS_REGISTRY: their hyper-parameters are the array function's
# keyword defaults (pytorch-metric-learning's); inputs the objective supplies are not options.
GENERIC_PROXY_LOSSES = ("cos_face", "large_margin_softmax", "sphere_face", "sub_center_arc_face", "p2s_grad")
GENERIC_PAIR_LOSSES = (
    "circle", "sup_con", "nt_xent", "lifted_structure", "generalized_lifted_structure", "tuplet_margin",
    "intra_pair_variance", "nca", "signal_to_noise_ratio_contrastive", "angular", "instance", "smooth_ap", "pnp",
    "histogram", "threshold_consistent_margin", "ranked_list",
)
# Losses of the registry that the trainer cannot feed (two views per image; random meta-classes; a state
# carried between steps): they exist as array functions only.
LABEL_FREE_LOSSES = {
    "vic_reg": "it compares two augmented views of each image, and the trainer feeds one",
    "manifold": "it is label-free (random meta-class proxies), and the trainer optimises labelled retrieval",
}
# The dynamic soft margin loss carries its histogram in the train state (`init_state`; `apply` returns the
# updated one as aux['loss_state']); pytorch-metric-learning's defaults.
DYNAMIC_SOFT_MARGIN_DEFAULTS = {"min_val": -2.0, "num_bins": 10, "momentum": 0.01}
_SUPPLIED = ("sample_mask", "pos_mask", "neg_mask", "magnitudes", "embedding_norms")


def _keyword_defaults(fn: Callable) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY and k not in _SUPPLIED}


def _takes_pair_masks(name: str) -> bool:
    return "pos_mask" in inspect.signature(losses.LOSS_REGISTRY[name].fn).parameters


LOSS_DEFAULTS.update({name: _keyword_defaults(losses.LOSS_REGISTRY[name].fn)
                      for name in GENERIC_PROXY_LOSSES + GENERIC_PAIR_LOSSES})

PROXY_LOSSES = ("proxy_anchor", "proxy_nca", "proxy_nca_pp", "normalized_softmax", "arcface", "soft_triple",
                *GENERIC_PROXY_LOSSES)
# Losses with several proxies per class (column c*K + k): no warm start.
MULTI_CENTER = {"soft_triple": "centers_per_class", "sub_center_arc_face": "sub_centers"}

# Concentration options of the vMF proxies (used only by similarities that read 'kappa' / 'kappas').
# Their directions are stored unnormalised (used through v/|v|) with initial norm proxy_concentration,
# so the proxies' angular step size scales as 1/|v| as in the official weight_norm parameterisation.
PROXY_KAPPA_DEFAULTS = {"proxy_concentration": 10.0, "kappa_param": "softplus", "kappa_min": 0.1}
# Every proxy loss but SoftTriple: `warm_start` sets each proxy row to |row| * normalize(mean training
# embedding of its class) before training (the EL-nivMF reference's warm start, docs/methods/nivmf.md#training-protocol).
PROXY_COMMON_DEFAULTS = {"warm_start": False}
KAPPA_PARAMS = ("softplus", "clamp")
# A learned ProxyNCA++ temperature is stored as log T ('log', positive by construction) or as T itself
# ('raw': the official EL-nivMF code's Adam step on T, which can cross 0).
TEMPERATURE_PARAMS = ("log", "raw")
GUIDANCE_POSITIVES = ("columns", "proxies")

MINERS = ("semihard", "hard", "all", "batch_hard", "distance_weighted", "multi_similarity", "angular", "pair_margin",
          "hdc", "batch_easy_hard", "uniform_histogram")
MINER_DEFAULTS: dict[str, dict] = {
    "semihard": {"miner_margin": None},
    "hard": {"miner_margin": None},
    "all": {"miner_margin": None},
    "batch_hard": {},
    "distance_weighted": {"cutoff": 0.5, "nonzero_loss_cutoff": 1.4, "triplets_per_anchor": None},
    "multi_similarity": {"epsilon": 0.1},
    "angular": {"angle": 20.0},
    "pair_margin": {"miner_pos_margin": 0.2, "miner_neg_margin": 0.8},
    "hdc": {"filter_percentage": 0.5},
    "batch_easy_hard": {"pos_strategy": "easy", "neg_strategy": "semihard"},
    "uniform_histogram": {"miner_num_bins": 100, "pos_per_bin": 10, "neg_per_bin": 10},
}
TRIPLET_MINERS = ("semihard", "hard", "all", "batch_hard", "distance_weighted", "angular")
PAIR_MINERS = ("multi_similarity", "pair_margin", "hdc", "batch_easy_hard", "uniform_histogram")
LOSS_MINERS = {
    "triplet": ("none",) + TRIPLET_MINERS,
    "margin": ("none",) + TRIPLET_MINERS,
    "contrastive": ("none",) + PAIR_MINERS,
    "multi_similarity": ("none",) + PAIR_MINERS,
    **{name: ("none",) + PAIR_MINERS for name in GENERIC_PAIR_LOSSES if _takes_pair_masks(name)},
}
DEFAULT_MINER = {"triplet": "semihard", "margin": "distance_weighted", "multi_similarity": "multi_similarity"}
# With a cross-batch memory: the losses (registry names) and miners that take the [B, M] batch-to-memory pairs.
MEMORY_LOSSES = losses.MEMORY_LOSSES
MEMORY_MINERS = ("none", "semihard", "hard", "all", "batch_hard", "multi_similarity", "pair_margin")

_COMMON_KEYS = ("name", "similarity", "similarity_options", "miner", "memory_size")


def memory_size(cfg: ml_collections.ConfigDict) -> int:
    """`cfg.memory_size` (0 = no cross-batch memory), checked: a non-negative integer."""
    size = cfg.get("memory_size", 0)
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
        raise ConfigError(f"loss.memory_size must be a non-negative integer (0 = off), got {size!r}")
    return int(size)


def _option_kind(default: Any) -> tuple[Callable[[Any], bool], str] | None:
    """What a loss option must be, judged by its default: a number (int or float, not bool) for a numeric
    default, a bool for a bool, a string for a string; None (anything) for a None default."""
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "true or false"
    if isinstance(default, numbers.Real):
        return (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)), "a number"
    if isinstance(default, str):
        return (lambda v: isinstance(v, str)), "a string"
    return None


def _options(cfg: ml_collections.ConfigDict, defaults: dict) -> dict:
    """The options `defaults` names, from `cfg` where given; a given value of the wrong kind (a string for a
    margin, ...) is a ConfigError here, before it reaches a traced loss."""
    out = {}
    for key, default in defaults.items():
        value = cfg.get(key, default)
        kind = _option_kind(default)
        if kind is not None and not kind[0](value):
            raise ConfigError(f"loss {cfg.get('name', '')!r} option {key} must be {kind[1]}, got {value!r}")
        out[key] = value
    return out


def _check_keys(cfg: ml_collections.ConfigDict, allowed: set[str]) -> None:
    unknown = sorted(set(cfg.keys()) - allowed)
    if unknown:
        raise ConfigError(
            f"loss {cfg.name!r} has no option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(allowed))}"
        )


# ----------------------------------------------------------------------------------------------------
# Proxy losses


def _kappa_init(value: float, kappa_param: str, kappa_min: float) -> float:
    """The raw parameter whose concentration is `value`."""
    if kappa_param == "clamp":
        return value
    excess = value - kappa_min
    if excess <= 0:
        raise ConfigError(f"proxy_concentration must exceed kappa_min={kappa_min}, got {value}")
    return excess + math.log(-math.expm1(-excess))  # softplus^{-1}


def _kappa(raw: Array, kappa_param: str, kappa_min: float) -> Array:
    """Concentration from its raw parameter: kappa_min + softplus(raw), or max(raw, kappa_min) (reference)."""
    if kappa_param == "clamp":
        return jnp.maximum(raw, kappa_min)
    return kappa_min + jax.nn.softplus(raw)


def proxy_concentrations(loss_cfg: ml_collections.ConfigDict, params: dict) -> Array | None:
    """The proxy concentrations of trained loss `params`: kappa [C] (isotropic vMF proxies) or kappas
    [C, D] (nivMF proxies), kappa = kappa_min + softplus(raw) or max(raw, kappa_min); None when the
    similarity reads none."""
    if similarity.PROXY_CONCENTRATION.get(loss_cfg.get("similarity", "cosine")) is None:
        return None
    opts = _options(loss_cfg, PROXY_KAPPA_DEFAULTS)
    return _kappa(params["proxy_kappa"], opts["kappa_param"], float(opts["kappa_min"]))


def learned_temperature(loss_cfg: ml_collections.ConfigDict, params: dict) -> Array:
    """The ProxyNCA++ temperature T of loss `params` with a learned 'temperature': exp(param) for
    temperature_param 'log' (the default), the parameter itself for 'raw' (the official code)."""
    raw = params["temperature"]
    return raw if loss_cfg.get("temperature_param", "log") == "raw" else jnp.exp(raw)


def _proxy_objective(cfg: ml_collections.ConfigDict, num_classes: int, embed_dim: int) -> Objective:
    name = cfg.name
    hp = _options(cfg, LOSS_DEFAULTS[name])
    sim_name = cfg.get("similarity", "cosine")
    sim_fn = _similarity(cfg)
    kappa_kind = similarity.PROXY_CONCENTRATION.get(sim_name)
    kappa_opts = _options(cfg, PROXY_KAPPA_DEFAULTS) if kappa_kind else {}
    common = _options(cfg, PROXY_COMMON_DEFAULTS)
    allowed = set(_COMMON_KEYS) | set(hp) | set(kappa_opts) | set(common)
    if common["warm_start"] and name in MULTI_CENTER:
        raise ConfigError(f"warm_start is not defined for {name} (several centres per class)")
    if memory_size(cfg):
        raise ConfigError(f"loss {name!r} cannot take a cross-batch memory (memory_size={cfg.memory_size}): proxy and "
                          f"classification losses compare the batch with class proxies; losses that can: "
                          f"{', '.join(MEMORY_LOSSES)}")
    _check_keys(cfg, allowed)
    if cfg.get("miner", "none") != "none":
        raise ConfigError(f"loss {name!r} takes no miner (miner='none'), got {cfg.miner!r}")
    if kappa_kind and kappa_opts["kappa_param"] not in KAPPA_PARAMS:
        raise unknown_choice("kappa_param", kappa_opts["kappa_param"], KAPPA_PARAMS)
    _check_bounded(name, sim_name)
    k_per_class = int(hp[MULTI_CENTER[name]]) if name in MULTI_CENTER else 1
    if name == "proxy_nca_pp" and hp["temperature_param"] not in TEMPERATURE_PARAMS:
        raise unknown_choice("temperature_param", hp["temperature_param"], TEMPERATURE_PARAMS)
    if name == "proxy_nca_pp" and hp["guidance_positives"] not in GUIDANCE_POSITIVES:
        raise unknown_choice("guidance_positives", hp["guidance_positives"], GUIDANCE_POSITIVES)
    if name == "proxy_nca_pp" and not 0 < hp["subsample"] <= 1:
        raise ConfigError(f"proxy_nca_pp: subsample must be in (0, 1], got {hp['subsample']}")
    temperature_inside = similarity.TEMPERATURE_INSIDE.get(sim_name, lambda o: False)(
        dict(cfg.get("similarity_options", {}))
    )

    def init(key: Array) -> dict:
        k_proxy, _ = jax.random.split(key)
        if kappa_kind:
            directions = similarity.l2_normalize(standard_normal(k_proxy, num_classes, embed_dim))
            proxies = directions * float(kappa_opts["proxy_concentration"])
        elif name == "proxy_anchor":
            proxies = kaiming_normal_fan_out(k_proxy, num_classes, embed_dim)
        elif name == "soft_triple":
            proxies = kaiming_uniform_sqrt5(k_proxy, num_classes * k_per_class, embed_dim)
        else:
            proxies = standard_normal(k_proxy, num_classes * k_per_class, embed_dim)
        params = {"proxies": proxies}
        if kappa_kind:
            raw = _kappa_init(float(kappa_opts["proxy_concentration"]), kappa_opts["kappa_param"],
                              float(kappa_opts["kappa_min"]))
            shape = (proxies.shape[0],) if kappa_kind == "scalar" else proxies.shape
            params["proxy_kappa"] = jnp.full(shape, raw, proxies.dtype)
        if name == "proxy_nca_pp" and hp["learn_temperature"]:
            t0 = hp["temperature"] if hp["temperature_param"] == "raw" else math.log(hp["temperature"])
            params["temperature"] = jnp.asarray(t0, proxies.dtype)
        return params

    def apply(params: dict, outputs: dict, labels: Array, key: Array, state: dict | None = None) -> tuple[Array, dict]:
        del state  # proxy losses carry no state
        proxy_bundle = {"embedding": params["proxies"]}
        if kappa_kind:
            kappa = _kappa(params["proxy_kappa"], kappa_opts["kappa_param"], float(kappa_opts["kappa_min"]))
            proxy_bundle["kappa" if kappa_kind == "scalar" else "kappas"] = kappa
        aux = {}
        k_sim, k_sub = jax.random.split(key)
        if name == "proxy_nca_pp":
            t = learned_temperature(cfg, params) if hp["learn_temperature"] else hp["temperature"]
            aux["temperature"] = jnp.asarray(t)
            sim = sim_fn(outputs, proxy_bundle, key=k_sim, temperature=t).similarity
            class_mask = None
            if hp["subsample"] < 1:
                class_mask = losses.proxy_subsample_mask(k_sub, labels, num_classes, hp["subsample"])
            loss = losses.proxy_nca_pp(sim, labels, temperature=1.0 if temperature_inside else t,
                                       class_mask=class_mask)
            if kappa_kind:
                aux["embedding_norm"] = jnp.mean(jnp.linalg.norm(outputs["embedding"], axis=-1))
                aux["proxy_kappa"] = jnp.mean(kappa)
            if hp["guidance_weight"]:
                guide = similarity.cosine(outputs["embedding"], params["proxies"])
                guidance = losses.proxy_anchor(guide, labels, margin=hp["guidance_margin"], alpha=hp["guidance_alpha"],
                                               positives_per=hp["guidance_positives"])
                aux["loss_guidance"] = guidance
                loss = loss + hp["guidance_weight"] * guidance
            return loss, aux
        sim = sim_fn(outputs, proxy_bundle, key=k_sim).similarity
        if name == "proxy_anchor":
            loss = losses.proxy_anchor(sim, labels, margin=hp["margin"], alpha=hp["alpha"])
        elif name == "proxy_nca":
            loss = losses.proxy_nca(sim, labels, scale=hp["scale"])
        elif name == "normalized_softmax":
            loss = losses.normalized_softmax(sim, labels, temperature=hp["temperature"])
        elif name == "arcface":
            loss = losses.arcface(sim, labels, margin=hp["margin"], scale=hp["scale"])
        elif name == "soft_triple":
            loss = losses.soft_triple(sim, labels, centers_per_class=k_per_class, la=hp["la"],
                                      gamma=hp["gamma"], margin=hp["margin"])
        else:
            extra = {}
            emb_norm = jnp.linalg.norm(outputs["embedding"], axis=-1)
            if name == "large_margin_softmax":  # logits scaled by |w_c| |x_i|
                extra["magnitudes"] = emb_norm[:, None] * jnp.linalg.norm(params["proxies"], axis=-1)[None, :]
            elif name == "sphere_face":  # logits scaled by |x_i|
                extra["embedding_norms"] = emb_norm
            loss = losses.LOSS_REGISTRY[name].fn(sim, labels, **hp, **extra)
        return loss, aux

    def warm_start(params: dict, embeddings: Array, labels: Array) -> dict:
        sums = jax.ops.segment_sum(embeddings, labels, num_segments=num_classes)
        counts = jax.ops.segment_sum(jnp.ones_like(labels, embeddings.dtype), labels, num_segments=num_classes)
        means = similarity.l2_normalize(sums / jnp.maximum(counts, 1.0)[:, None])
        norms = jnp.linalg.norm(params["proxies"], axis=-1, keepdims=True)
        # Classes without training images keep their initial proxy.
        proxies = jnp.where(counts[:, None] > 0, means * norms, params["proxies"])
        return {**params, "proxies": proxies.astype(params["proxies"].dtype)}

    return Objective(init, apply, warm_start if common["warm_start"] else None)


# ----------------------------------------------------------------------------------------------------
# Pair losses


def _pair_objective(cfg: ml_collections.ConfigDict, num_classes: int, embed_dim: int) -> Objective:
    name = cfg.name
    hp = _options(cfg, LOSS_DEFAULTS[name])
    sim_fn = _similarity(cfg)
    miner = cfg.get("miner", DEFAULT_MINER.get(name, "none"))
    valid_miners = LOSS_MINERS.get(name, ("none",))
    if miner not in valid_miners:
        raise unknown_choice(f"miner for loss {name!r}", miner, valid_miners)
    miner_hp = _options(cfg, MINER_DEFAULTS.get(miner, {}))
    _check_keys(cfg, set(_COMMON_KEYS) | set(hp) | set(miner_hp))
    if name in GENERIC_PAIR_LOSSES:
        _check_bounded(name, cfg.get("similarity", "cosine"))
    if miner == "angular" and cfg.get("similarity", "cosine") not in similarity.BOUNDED_SIMILARITIES:
        raise ConfigError(f"miner 'angular' needs a similarity in [-1, 1]; {cfg.get('similarity')!r} is not one of "
                          f"{', '.join(sorted(similarity.BOUNDED_SIMILARITIES))}")
    if name == "signal_to_noise_ratio_contrastive" and cfg.get("similarity", "cosine") != "cosine":
        raise ConfigError("signal_to_noise_ratio_contrastive uses the SNR distance of the embeddings; "
                          f"similarity must be 'cosine' (the default), got {cfg.similarity!r}")
    if miner_hp.get("miner_margin", 0) is None:
        miner_hp["miner_margin"] = hp["margin"]
    per_class = name == "margin" and hp["beta_per_class"]
    mem_size = memory_size(cfg)
    if mem_size:
        if losses.canonical_name(name) not in MEMORY_LOSSES:
            raise ConfigError(f"loss {name!r} cannot take a cross-batch memory (memory_size={mem_size}); losses that "
                              f"can: {', '.join(MEMORY_LOSSES)}")
        if miner not in MEMORY_MINERS:
            raise ConfigError(f"miner {miner!r} cannot take a cross-batch memory (memory_size={mem_size}); miners "
                              f"that can: {', '.join(MEMORY_MINERS)}")

    def init(key: Array) -> dict:
        del key
        if name == "margin" and hp["learn_beta"]:
            shape = (num_classes,) if per_class else ()
            return {"loss_params": {"beta": jnp.full(shape, hp["beta"], jnp.float32)}}
        return {}

    def triplets(pair: similarity.Pairwise, labels: Array, key: Array, **ref) -> Array | None:
        d = pair.distance
        if miner == "none":
            return None
        if miner in ("semihard", "hard", "all"):
            return mining.triplet_margin_mask(d, labels, margin=miner_hp["miner_margin"], kind=miner, **ref)
        if miner == "batch_hard":
            return mining.batch_hard_mask(d, labels, **ref)
        if miner == "angular":
            return mining.angular_mask(pair.similarity, labels, angle=miner_hp["angle"])
        return mining.distance_weighted_triplets(
            key, d, labels, dim=embed_dim, cutoff=miner_hp["cutoff"],
            nonzero_loss_cutoff=miner_hp["nonzero_loss_cutoff"], triplets_per_anchor=miner_hp["triplets_per_anchor"],
        )

    def pairs(pair: similarity.Pairwise, labels: Array, key: Array, **ref) -> tuple[Array | None, Array | None]:
        d = pair.distance
        if miner == "none":
            return None, None
        if miner == "pair_margin":
            return mining.pair_margin_pairs(d, labels, pos_margin=miner_hp["miner_pos_margin"],
                                            neg_margin=miner_hp["miner_neg_margin"], **ref)
        if miner == "hdc":
            return mining.hdc_pairs(d, labels, filter_percentage=miner_hp["filter_percentage"])
        if miner == "batch_easy_hard":
            return mining.batch_easy_hard_pairs(d, labels, pos_strategy=miner_hp["pos_strategy"],
                                                neg_strategy=miner_hp["neg_strategy"])
        if miner == "uniform_histogram":  # the drawn set (counts > 0)
            pos, neg = mining.uniform_histogram_pairs(key, d, labels, num_bins=int(miner_hp["miner_num_bins"]),
                                                      pos_per_bin=int(miner_hp["pos_per_bin"]),
                                                      neg_per_bin=int(miner_hp["neg_per_bin"]))
            return pos > 0, neg > 0
        return mining.multi_similarity_pairs(pair.similarity, labels, epsilon=miner_hp["epsilon"], **ref)

    def init_state(like: dict) -> dict:
        return {"memory": losses.CrossBatchMemory.create(mem_size, _memory_outputs(like))}

    def update_state(state: dict, outputs: dict, labels: Array) -> dict:
        return {**state, "memory": state["memory"].enqueue(_memory_outputs(outputs), labels)[0]}

    def memory_apply(params: dict, outputs: dict, labels: Array, key: Array, state: dict) -> tuple[Array, dict]:
        """The loss of the batch (queries) against the memory after `update_state` enqueued it."""
        memory = state["memory"]
        k_sim, k_mine = jax.random.split(key)
        pair = sim_fn(outputs, memory.outputs, key=k_sim)  # [B, M]
        ref = {"ref_labels": memory.labels, "ref_mask": memory.valid}
        slots = memory.last_slots(labels.shape[0])
        aux = {"memory_filled": memory.count.astype(jnp.float32) / mem_size}
        if name in ("triplet", "margin"):
            mined = triplets(pair, labels, k_mine, **ref)
            kw = memory.references(slots, triplets=True if mined is None else mined)
            if name == "triplet":
                return losses.triplet_margin(pair.distance, labels, margin=hp["margin"], **kw), aux
            beta = params["loss_params"]["beta"] if hp["learn_beta"] else hp["beta"]
            aux["beta"] = jnp.mean(jnp.asarray(beta))
            return losses.margin_loss(pair.distance, labels, beta=beta, margin=hp["margin"], nu=hp["nu"], **kw), aux
        pos, neg = pairs(pair, labels, k_mine, **ref)
        kw = memory.references(slots, pos_mask=pos, neg_mask=neg)
        spec = losses.LOSS_REGISTRY[losses.canonical_name(name)]
        x = pair.similarity if spec.reads == "similarity" else pair.distance
        return spec.fn(x, labels, **hp, **kw), aux

    def apply(params: dict, outputs: dict, labels: Array, key: Array, state: dict | None = None) -> tuple[Array, dict]:
        if mem_size:
            if state is None or "memory" not in state:
                raise ValueError(f"loss {name!r} with memory_size={mem_size} needs its state "
                                 "(init_state, then update_state with the batch)")
            return memory_apply(params, outputs, labels, key, state)
        k_sim, k_mine = jax.random.split(key)
        pair = sim_fn(outputs, outputs, key=k_sim)
        aux = {}
        if name == "contrastive":
            pos, neg = pairs(pair, labels, k_mine)
            loss = losses.contrastive(pair.distance, labels, pos_margin=hp["pos_margin"],
                                      neg_margin=hp["neg_margin"], pos_mask=pos, neg_mask=neg)
        elif name == "multi_similarity":
            pos, neg = pairs(pair, labels, k_mine)
            loss = losses.multi_similarity(pair.similarity, labels, alpha=hp["alpha"], beta=hp["beta"],
                                           base=hp["base"], pos_mask=pos, neg_mask=neg)
        elif name == "triplet":
            t = triplets(pair, labels, k_mine)
            loss = losses.triplet_margin(pair.distance, labels, margin=hp["margin"], triplets=t)
        elif name == "margin":
            beta = params["loss_params"]["beta"] if hp["learn_beta"] else hp["beta"]
            t = triplets(pair, labels, k_mine)
            loss = losses.margin_loss(pair.distance, labels, beta=beta, margin=hp["margin"], nu=hp["nu"],
                                      triplets=t)
            aux["beta"] = jnp.mean(jnp.asarray(beta))
        elif name == "npair":
            loss = losses.npair(pair.similarity, labels)
        elif name == "fast_ap":
            loss = losses.fast_ap(pair.distance ** hp["distance_power"], labels, num_bins=int(hp["num_bins"]),
                                  histogram_max=hp["histogram_max"])
        else:
            spec = losses.LOSS_REGISTRY[name]
            x = pair.similarity if spec.reads == "similarity" else pair.distance
            if name == "signal_to_noise_ratio_contrastive":
                x = losses.snr_distance(outputs["embedding"])
            masks = {}
            if _takes_pair_masks(name):
                masks["pos_mask"], masks["neg_mask"] = pairs(pair, labels, k_mine)
            loss = spec.fn(x, labels, **hp, **masks)
        return loss, aux

    if mem_size:
        return Objective(init, apply, init_state=init_state, update_state=update_state)
    return Objective(init, apply)


def _dynamic_soft_margin_objective(cfg: ml_collections.ConfigDict, num_classes: int, embed_dim: int) -> Objective:
    """probdml.losses.dynamic_soft_margin over all valid triplets of the batch, on the similarity's distance,
    with its histogram [num_bins] in the train state (zeros at the start, PML's initial state)."""
    del num_classes, embed_dim
    _check_keys(cfg, {"name", "similarity", "similarity_options", *DYNAMIC_SOFT_MARGIN_DEFAULTS})
    hp = _options(cfg, DYNAMIC_SOFT_MARGIN_DEFAULTS)
    num_bins = hp["num_bins"]
    if not isinstance(num_bins, numbers.Integral) or num_bins < 1:  # a bool was refused by _options
        raise ConfigError(f"dynamic_soft_margin num_bins must be a positive integer, got {num_bins!r}")
    if not hp["min_val"] < 0:
        raise ConfigError(f"dynamic_soft_margin min_val must be negative (bins on [min_val, -min_val]), got {hp['min_val']}")
    if not 0 <= hp["momentum"] <= 1:
        raise ConfigError(f"dynamic_soft_margin momentum must be in [0, 1], got {hp['momentum']}")
    sim_fn = _similarity(cfg)

    def init(key: Array) -> dict:
        del key
        return {}

    def init_state(like: dict) -> dict:
        del like
        return {"histogram": jnp.zeros((int(num_bins),), jnp.float32)}

    def apply(params: dict, outputs: dict, labels: Array, key: Array, state: dict | None = None) -> tuple[Array, dict]:
        del params
        if state is None or "histogram" not in state:
            raise ValueError("loss 'dynamic_soft_margin' needs its state (init_state): the histogram of past batches")
        pair = sim_fn(outputs, outputs, key=key)
        loss, histogram = losses.dynamic_soft_margin(pair.distance, labels, state["histogram"],
                                                     min_val=float(hp["min_val"]), momentum=float(hp["momentum"]))
        return loss, {"loss_state": {**state, "histogram": histogram}}

    return Objective(init, apply, init_state=init_state)


LOSSES: dict[str, Callable[[ml_collections.ConfigDict, int, int], Objective]] = {
    name: (_proxy_objective if name in PROXY_LOSSES else _pair_objective) for name in LOSS_DEFAULTS
}
LOSSES["dynamic_soft_margin"] = _dynamic_soft_margin_objective
# The registry names (snake_case of the pytorch-metric-learning class) of losses that had other names here.
LOSS_ALIASES = {canonical: old for old, canonical in losses.ALIASES.items()}
LOSSES.update({canonical: LOSSES[old] for canonical, old in LOSS_ALIASES.items()})


# The per-sample outputs a similarity reads (probdml.similarity.bundles): what a cross-batch memory stores.
MEMORY_OUTPUTS = ("embedding", "uncertainty", "kappa", "kappas")


def _memory_outputs(outputs: dict) -> dict:
    return {k: v for k, v in outputs.items() if k in MEMORY_OUTPUTS}


def _check_bounded(name: str, sim_name: str) -> None:
    """Losses with angular margins or clipping need a cosine-like similarity in [-1, 1]."""
    if losses.LOSS_REGISTRY[losses.canonical_name(name)].bounded and sim_name not in similarity.BOUNDED_SIMILARITIES:
        raise ConfigError(
            f"{name} needs a similarity in [-1, 1]; {sim_name!r} is not one of "
            f"{', '.join(sorted(similarity.BOUNDED_SIMILARITIES))}"
        )


def _similarity(cfg: ml_collections.ConfigDict) -> Callable[..., similarity.Pairwise]:
    options = cfg.get("similarity_options", None)
    options = {} if options is None else dict(options)
    return similarity.get_similarity(cfg.get("similarity", "cosine"), **options)


def build_objective(loss_cfg: ml_collections.ConfigDict, num_classes: int, embed_dim: int) -> Objective:
    """The objective named by `loss_cfg.name` with the similarity `loss_cfg.similarity`."""
    if loss_cfg.name in LABEL_FREE_LOSSES:
        raise ConfigError(f"loss {loss_cfg.name!r} has no config objective: {LABEL_FREE_LOSSES[loss_cfg.name]} "
                          f"(use probdml.losses.{loss_cfg.name})")
    if loss_cfg.name not in LOSSES:
        raise unknown_choice("loss", loss_cfg.name, LOSSES)
    if loss_cfg.name in LOSS_ALIASES:
        loss_cfg = ml_collections.ConfigDict(loss_cfg.to_dict())
        loss_cfg.name = LOSS_ALIASES[loss_cfg.name]
    return LOSSES[loss_cfg.name](loss_cfg, num_classes, embed_dim)
