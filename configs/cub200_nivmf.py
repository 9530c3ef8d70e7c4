"""Alias of configs/nivmf/cub200.py (same runs; its docstring lists them, probdml.nivmf_recipes documents them).

    python -m probdml.main --config=configs/cub200_nivmf.py:r128 --workdir=W --config.model.pretrained=DIR
"""

import ml_collections

from probdml.nivmf_recipes import nivmf_retrieval_config


def get_config(run: str = "r512") -> ml_collections.ConfigDict:
    return nivmf_retrieval_config("cub200", run or "r512")
