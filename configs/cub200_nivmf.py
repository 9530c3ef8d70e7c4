"""EL-nivMF on cub200 (specs/nivmf.md section 3.8; probdml.nivmf_recipes documents the runs and the protocol).

    python -m probdml.main --config=configs/cub200_nivmf.py --workdir=W --config.model.pretrained=DIR
    --config=configs/cub200_nivmf.py:r128            the official 128-d run (default: r512)
    --config=configs/cub200_nivmf.py:r512_compat     the official computation (5-sample MC, quadratic log C_p)
    --config=configs/cub200_nivmf.py:fig5_kl_iso     a Figure-5 ablation run (probdml.nivmf_recipes.run_names())
"""

import ml_collections

from probdml.nivmf_recipes import nivmf_retrieval_config


def get_config(run: str = "r512") -> ml_collections.ConfigDict:
    return nivmf_retrieval_config("cub200", run or "r512")
