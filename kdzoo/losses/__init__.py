"""Every built-in method's loss as a plain function on tensors: no models, no plugins, no engine.

The method plugins (``kdzoo_plugins``) compute their terms with these functions; a hand-written
training loop, a test or another library can call them directly. Teacher inputs never receive a
gradient. Each returns the **unweighted** term a method logs (weights are the method's, see
``kdzoo show METHOD``), except :func:`kd_loss`, the whole Hinton objective.

=============================================  =======  ==============================================
function                                        method   what
=============================================  =======  ==============================================
``soft_target_kl(s_logits, t_logits, T)``       kd       ``T^2 KL(softmax(t/T) || softmax(s/T))``, batchmean
``kd_loss(s_logits, t_logits, y, T, a, b)``     kd       ``a CE + b T^2 KL``, the whole objective
``standardize(logits)``                         kd, dkd  logit standardization: per-sample z-score
``dkd_terms(s_logits, t_logits, y, T)``         dkd      (TCKD, NCKD), each ``T^2 KL`` batchmean
``dist_losses(s_logits, t_logits, tau)``        dist     (inter, intra): ``tau^2 (1 - mean Pearson)``
``channel_relation_loss(f_s, f_t)``             dist+    ``1 -`` channel-wise Pearson at each position
``spatial_relation_loss(f_s, f_t)``             dist+    ``1 -`` Pearson across the batch per position
``virtual_teacher_loss(s_logits, y, T, p)``     tfkd     KL from Tf-KD's virtual teacher
``hint_loss(s_mapped, t_feature)``              fitnets  MSE of the regressed student map and the teacher's
``at_loss(s_feature, t_feature, p, form)``      at       attention transfer of one stage pair
``attention_loss(s_att, t_att, form)``          at       the same from :func:`spatial_attention` maps
``spatial_attention(feature, p)``               at       ``normalize(mean_c f^p)``, (B, 1, H, W)
``rkd_distance_loss(s_emb, t_emb)``             rkd      smooth-L1 of mean-normalised pairwise distances
``rkd_angle_loss(s_emb, t_emb)``                rkd      smooth-L1 of triplet angle cosines (B x B x B)
``byot_losses(heads, deep_feat, deep_logits,    self-    Be Your Own Teacher's CE, KL and hint terms
y, T)``                                         distill
``nce_loss(scores, num_samples)``               crd      NCE of (B, K + 1) contrast scores, positive first
``ofa_loss(s_logits, t_logits, y, eps, T)``     ofa      ``-sum_c ((p_t + y)^eps - y) log p_s``, batch mean
``batch_level_loss(s_logits, t_logits, T)``     mlkd     ``||P_t P_t^T - P_s P_s^T||^2 / B`` (and ``class_level_loss``)
``sskd_terms(...)``                             sskd     KD, T-SS KD and SS-KD of rotated copies
=============================================  =======  ==============================================
"""

from kdzoo.api import soft_target_kl
from kdzoo.losses.at import at_loss, attention_loss, attention_map, spatial_attention
from kdzoo.losses.crd import nce_loss
from kdzoo.losses.dist import (
    channel_relation_loss,
    dist_inter_loss,
    dist_intra_loss,
    dist_losses,
    spatial_relation_loss,
)
from kdzoo.losses.dkd import dkd_terms
from kdzoo.losses.fitnets import hint_loss
from kdzoo.losses.kd import kd_loss, standardize
from kdzoo.losses.mlkd import batch_level_loss, class_level_loss
from kdzoo.losses.ofa import ofa_loss
from kdzoo.losses.rkd import (
    Relations,
    angle_term,
    distance_term,
    normalised_distances,
    pairwise_distances,
    rkd_angle_loss,
    rkd_distance_loss,
    triplet_cosines,
)
from kdzoo.losses.self_distill import byot_losses
from kdzoo.losses.sskd import sskd_terms
from kdzoo.losses.tfkd import virtual_teacher, virtual_teacher_loss

__all__ = [
    "Relations",
    "channel_relation_loss",
    "dist_inter_loss",
    "dist_intra_loss",
    "dist_losses",
    "dkd_terms",
    "spatial_relation_loss",
    "standardize",
    "virtual_teacher",
    "virtual_teacher_loss",
    "angle_term",
    "at_loss",
    "attention_loss",
    "attention_map",
    "batch_level_loss",
    "byot_losses",
    "class_level_loss",
    "distance_term",
    "hint_loss",
    "kd_loss",
    "nce_loss",
    "normalised_distances",
    "ofa_loss",
    "pairwise_distances",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "soft_target_kl",
    "spatial_attention",
    "sskd_terms",
    "triplet_cosines",
]
