"""EL-nivMF and its ablation grid on Cars196 (specs/nivmf.md sections 3.7-3.8, 6, 8).

    python -m probdml.main --config=configs/nivmf/cars196.py:RUN --workdir=W --config.model.pretrained=DIR

RUN (default r512): the runs of configs/nivmf/cub200.py (listed there and by
probdml.nivmf_recipes.run_names()) on this dataset.

Official runs at both dimensions: r128 (300 epochs, milestones 60/80, gamma 0.1, concentration 9,
init_norm_multiplier 12, guidance 0.3) and r512 (milestones 105/170, gamma 0.2, concentration 22,
init_norm_multiplier 10, guidance 0.1); the ablation grid at both dimensions (fig5_*, fig5_*_d128).
"""

import ml_collections

from probdml.nivmf_recipes import nivmf_retrieval_config


def get_config(run: str = "r512") -> ml_collections.ConfigDict:
    return nivmf_retrieval_config("cars196", run or "r512")
