"""Logit matching (Ba & Caruana, NIPS 2014) as a kdzoo method plugin.

For your own training loop, without kdzoo's engine::

    from kdzoo_logit_matching import LogitMatchingLoss
"""

from kdzoo_logit_matching.plugin import LogitMatching, LogitMatchingConfig, LogitMatchingLoss, logit_l2, ramp

__all__ = ["LogitMatching", "LogitMatchingConfig", "LogitMatchingLoss", "logit_l2", "ramp"]
