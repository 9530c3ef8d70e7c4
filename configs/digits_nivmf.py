"""EL-nivMF on the scikit-learn digits (classes 0-4 train, 5-9 test), same budget as configs/digits.py.

Images are vMF(e/|e|, |e|) of the raw SmallConvNet embedding; class proxies are nivMFs (direction and
per-axis concentrations); the similarity is the exact EL kernel (closed form of the reference_linear
nivMF), inside ProxyNCA++ with a learnable temperature (log T). Retrieval uses the cosine.
"""

import ml_collections

from configs import digits


def get_config() -> ml_collections.ConfigDict:
    config = nivmf_from(digits.get_config())
    config.model.embed_dim = 128
    config.model.init_norm_multiplier = 1.0
    return config


def nivmf_from(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` (a ProxyAnchor config) turned into EL-nivMF: ProxyNCA++ over the closed-form EL kernel
    between the image vMF (direction e/|e|, concentration |e|) and nivMF proxies, learnable log T,
    warm-started proxy directions, skipped non-finite steps. The model is left to the caller (its raw,
    unnormalised embedding is used). Shared by the digits and glyphs EL-nivMF configs."""
    config.loss = ml_collections.ConfigDict()
    config.loss.name = "proxy_nca_pp"
    config.loss.similarity = "el_nivmf"
    config.loss.similarity_options = {
        "form": "reference_linear",  # or 'stretched' / 'exact' (with estimator='monte_carlo')
        "estimator": "closed_form",  # or 'monte_carlo' (num_samples draws per image, shared by all proxies)
        "num_samples": 10,
        "temperature_placement": "outside",  # 'inside': the official log E[niv^(1/T)]
        "normalizer": "exact",
    }
    config.loss.temperature = 1.0
    config.loss.learn_temperature = True
    config.loss.guidance_weight = 0.0
    config.loss.proxy_concentration = 10.0
    config.loss.kappa_param = "softplus"
    config.loss.kappa_min = 0.1
    config.loss.warm_start = True

    config.optim.lr_mults = {"proxies": 100.0, "proxy_kappa": 100.0, "temperature": 10.0}
    config.optim.weight_decay_mults = {"proxies": 0.0, "proxy_kappa": 0.0, "temperature": 0.0}
    config.optim.skip_nonfinite_updates = True
    return config
