"""kdzoo-dkd: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022) for kdzoo.

Installed, it registers the method ``dkd`` through the ``kdzoo`` entry-point group
(``kdzoo list``, ``kdzoo run --method dkd``). The loss is also usable on its own::

    from kdzoo_dkd import DKDLoss
    loss = DKDLoss()(student_logits, teacher_logits, labels, epoch=epoch)
"""

from kdzoo_dkd.plugin import DKD, NCKD, TCKD, DKDConfig, DKDLoss, dkd_terms, dkd_weights, warmup_factor

__version__ = "0.1.0"

__all__ = ["DKD", "NCKD", "TCKD", "DKDConfig", "DKDLoss", "dkd_terms", "dkd_weights", "warmup_factor"]
