"""EL-nivMF and its ablation grid on Stanford Online Products (specs/nivmf.md sections 3.7-3.8, 6, 8).

    python -m probdml.main --config=configs/nivmf/sop.py:RUN --workdir=W --config.model.pretrained=DIR

RUN (default r512): the runs of configs/nivmf/cub200.py (listed there and by
probdml.nivmf_recipes.run_names()) on this dataset.

SOP has no official recipe (specs/nivmf.md C12): r128/r512 use CUB-200-2011's hyper-parameters, NOT values
from the official code. Evaluation: recall@1/10/100/1000, no clustering (11,316 test classes).
"""

import ml_collections

from probdml.nivmf_recipes import nivmf_retrieval_config


def get_config(run: str = "r512") -> ml_collections.ConfigDict:
    return nivmf_retrieval_config("sop", run or "r512")
