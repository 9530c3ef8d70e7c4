"""EL-nivMF on cars196 (specs/nivmf.md section 3.8; probdml.nivmf_recipes documents the runs and the protocol).

    python -m probdml.main --config=configs/cars196_nivmf.py --workdir=W --config.model.pretrained=DIR
    --config=configs/cars196_nivmf.py:r128            the official 128-d run (default: r512)
    --config=configs/cars196_nivmf.py:r512_compat     the official computation (5-sample MC, quadratic log C_p)
    --config=configs/cars196_nivmf.py:fig5_kl_iso     a Figure-5 ablation run (probdml.nivmf_recipes.run_names())
"""

import ml_collections

from probdml.nivmf_recipes import nivmf_retrieval_config


def get_config(run: str = "r512") -> ml_collections.ConfigDict:
    return nivmf_retrieval_config("cars196", run or "r512")
