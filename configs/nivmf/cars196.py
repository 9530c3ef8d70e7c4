"""EL-nivMF and its ablation grid on Cars196 (docs/methods/nivmf.md#training-protocol, docs/methods/nivmf.md#the-official-runs and C1-C18).

    python -m probdml.main --config=configs/nivmf/cars196.py:RUN --workdir=W --config.model.pretrained=DIR

RUN (default r512; probdml.nivmf_recipes documents the protocol and every value):

  r128, r512                     the official EL-nivMF runs (ProxyNCA++ over the closed-form EL kernel of
                                 nivMF proxies, temperature inside, ProxyAnchor guidance, warm start)
  r128_compat, r512_compat       the official computation: 5-sample Monte Carlo with the temperature inside
                                 the average, quadratic log C_p fit, clamped kappas
  fig5_<distance>_<iso|niso>     Figure-5 ablation cell at dim 512 (50 epochs, batch 106, no decay);
                                 distance: el, kl, bhattacharyya, loglik, l2, cosine; iso = vMF proxies,
                                 niso = nivMF proxies; KL is the exact -KL(image || proxy)
  fig5_<distance>_<iso|niso>_d128   the same cell at dim 128
  fig5_<cell>_compat             the official code's computation of a cell it has: el_niso, el_iso,
                                 bhattacharyya_iso, kl_iso, loglik_niso, l2_iso, cosine_iso

Official runs at both dimensions: r128 (300 epochs, milestones 60/80, gamma 0.1, concentration 9,
init_norm_multiplier 12, guidance 0.3) and r512 (milestones 105/170, gamma 0.2, concentration 22,
init_norm_multiplier 10, guidance 0.1); the ablation grid at both dimensions (fig5_*, fig5_*_d128).
"""

import ml_collections

from probdml.nivmf_recipes import nivmf_retrieval_config


def get_config(run: str = "r512") -> ml_collections.ConfigDict:
    return nivmf_retrieval_config("cars196", run or "r512")
