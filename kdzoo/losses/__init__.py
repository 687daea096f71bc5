"""The built-in methods' losses as plain functions on tensors: no models, no plugins, no engine.

One module per method (``kdzoo.losses.rkd``), every public function of each exported here. The method
plugins (``kdzoo_plugins``) compute their terms with these functions; a hand-written training loop, a
test or another library can call them directly. Teacher inputs never receive a gradient. Each loss
returns the **unweighted** term a method logs (weights are the method's, see ``kdzoo show METHOD``),
except :func:`kd_loss`, the whole Hinton objective. Two methods have no module of their own: ``deit``
(cross-entropy with the teacher's argmax, or :func:`soft_target_kl`) and ``simkd`` (an MSE);
``dist_plus`` is in :mod:`.dist`. :mod:`.shapes` pools two maps to one size (not exported).

Per method, its terms first, then their building blocks:

- ``kd``: ``soft_target_kl(s_logits, t_logits, T)`` (``T^2 KL``, batchmean); ``kd_loss(s_logits, t_logits,
  y, T, a, b)`` (``a CE + b T^2 KL``, the whole objective); ``standardize(logits)`` (logit
  standardization, a per-sample z-score; kd, dkd, ctkd)
- ``dkd``: ``dkd_terms(s_logits, t_logits, y, T)`` (TCKD, NCKD)
- ``ctkd``: ``kl_at(s_logits, t_logits, T)`` (KD at a temperature tensor); ``cosine_ramp``
- ``ofa``: ``ofa_loss(s_logits, t_logits, y, eps, T)`` (``-sum_c ((p_t + y)^eps - y) log p_s``)
- ``mlkd``: ``instance_level_loss``, ``batch_level_loss``, ``class_level_loss`` (at one temperature);
  ``confidence_fractions``
- ``dist``, ``dist_plus``: ``dist_losses(s_logits, t_logits, tau)`` (inter, intra), ``dist_inter_loss``,
  ``dist_intra_loss``, ``channel_relation_loss(f_s, f_t)``, ``spatial_relation_loss(f_s, f_t)``; ``pearson``
- ``skd``: ``skd_instance_loss``, ``skd_direction_loss``
- ``tfkd``: ``virtual_teacher_loss(s_logits, y, T, p)``; ``virtual_teacher``
- ``self-distill``: ``byot_losses(heads, deep_feat, deep_logits, y, T)`` (Be Your Own Teacher's CE, KL, hint)
- ``fitnets``: ``hint_loss(s_mapped, t_feature)`` (MSE)
- ``at``: ``at_loss(f_s, f_t, p, form)``, ``attention_loss(s_att, t_att, form)``; ``spatial_attention``,
  ``attention_map``
- ``nst``: ``nst_loss(f_s, f_t)`` (squared MMD, polynomial kernel)
- ``vid``: ``vid_loss(mean, variance, t_feature)`` (Gaussian negative log-likelihood)
- ``fsp``: ``fsp_loss``, ``fsp_flow_loss``; ``fsp_matrix``
- ``ab``: ``ab_loss(s_preacts, t_preacts, margin)``; ``boundary_loss``
- ``ofd``: ``ofd_loss(s_preacts, t_preacts, margins)``; ``partial_l2``, ``negative_margin``
- ``ft``: ``factor_loss(s_factor, t_factor)``, ``reconstruction_loss`` (the paraphraser's)
- ``ickd``: ``ickd_loss(f_s, f_t)``; ``channel_correlation``
- ``srd``: ``srd_loss(z_s, z_t, exponent)``
- ``pad``: ``pad_l2_loss(s_emb, t_emb, log_variance)``
- ``reviewkd``: ``hcl_loss(s_map, t_map, pyramid)`` (the hierarchical context loss of one level)
- ``rkd``: ``rkd_distance_loss(s_emb, t_emb)``, ``rkd_angle_loss(s_emb, t_emb)``; ``Relations``,
  ``teacher_relations``, ``distance_term``, ``angle_term``, ``pairwise_distances``, ``normalised_distances``,
  ``triplet_cosines``
- ``pkt``: ``pkt_loss(s_emb, t_emb)``
- ``sp``: ``sp_loss(f_s, f_t)``; ``similarity_matrix``
- ``cc``: ``cc_loss(s_emb, t_emb, gamma, order)``; ``correlation_matrix``
- ``crd``: ``nce_loss(scores, num_samples)``; ``contrast_scores``, ``other_class_draws``
- ``mtkd``: ``multi_teacher_kl(s_logits, [t_logits, ...], y, T, weighting)`` (CA-MKD's confidence-weighted,
  EBKD's entropy-weighted or the average soft-target term over several teachers); ``teacher_weights``
- ``sskd``: ``sskd_terms(...)`` (KD, T-SS KD and SS-KD of rotated copies), ``contrastive_prediction_loss``
  (the teacher head's); ``similarities``, ``kept_rows``, ``softened_kl``
"""

from kdzoo.api import soft_target_kl
from kdzoo.losses.ab import ab_loss, boundary_loss
from kdzoo.losses.at import at_loss, attention_loss, attention_map, spatial_attention
from kdzoo.losses.cc import cc_loss, correlation_matrix
from kdzoo.losses.crd import contrast_scores, nce_loss, other_class_draws
from kdzoo.losses.ctkd import cosine_ramp, kl_at
from kdzoo.losses.dist import (
    channel_relation_loss,
    dist_inter_loss,
    dist_intra_loss,
    dist_losses,
    pearson,
    spatial_relation_loss,
)
from kdzoo.losses.dkd import dkd_terms
from kdzoo.losses.fitnets import hint_loss
from kdzoo.losses.fsp import fsp_flow_loss, fsp_loss, fsp_matrix
from kdzoo.losses.ft import factor_loss, reconstruction_loss
from kdzoo.losses.ickd import channel_correlation, ickd_loss
from kdzoo.losses.kd import kd_loss, standardize
from kdzoo.losses.mlkd import batch_level_loss, class_level_loss, confidence_fractions, instance_level_loss
from kdzoo.losses.mtkd import multi_teacher_kl, teacher_weights
from kdzoo.losses.nst import nst_loss
from kdzoo.losses.ofa import ofa_loss
from kdzoo.losses.ofd import negative_margin, ofd_loss, partial_l2
from kdzoo.losses.pad import pad_l2_loss
from kdzoo.losses.pkt import pkt_loss
from kdzoo.losses.reviewkd import hcl_loss
from kdzoo.losses.rkd import (
    Relations,
    angle_term,
    distance_term,
    normalised_distances,
    pairwise_distances,
    rkd_angle_loss,
    rkd_distance_loss,
    teacher_relations,
    triplet_cosines,
)
from kdzoo.losses.self_distill import byot_losses
from kdzoo.losses.skd import skd_direction_loss, skd_instance_loss
from kdzoo.losses.sp import similarity_matrix, sp_loss
from kdzoo.losses.srd import srd_loss
from kdzoo.losses.sskd import contrastive_prediction_loss, kept_rows, similarities, softened_kl, sskd_terms
from kdzoo.losses.tfkd import virtual_teacher, virtual_teacher_loss
from kdzoo.losses.vid import vid_loss

__all__ = [
    "Relations",
    "ab_loss",
    "angle_term",
    "at_loss",
    "attention_loss",
    "attention_map",
    "batch_level_loss",
    "boundary_loss",
    "byot_losses",
    "cc_loss",
    "channel_correlation",
    "channel_relation_loss",
    "class_level_loss",
    "confidence_fractions",
    "contrast_scores",
    "contrastive_prediction_loss",
    "correlation_matrix",
    "cosine_ramp",
    "dist_inter_loss",
    "dist_intra_loss",
    "dist_losses",
    "distance_term",
    "dkd_terms",
    "factor_loss",
    "fsp_flow_loss",
    "fsp_loss",
    "fsp_matrix",
    "hcl_loss",
    "hint_loss",
    "ickd_loss",
    "instance_level_loss",
    "kd_loss",
    "kept_rows",
    "kl_at",
    "multi_teacher_kl",
    "negative_margin",
    "nce_loss",
    "normalised_distances",
    "nst_loss",
    "ofa_loss",
    "ofd_loss",
    "other_class_draws",
    "pad_l2_loss",
    "pairwise_distances",
    "partial_l2",
    "pearson",
    "pkt_loss",
    "reconstruction_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarities",
    "similarity_matrix",
    "skd_direction_loss",
    "skd_instance_loss",
    "soft_target_kl",
    "softened_kl",
    "sp_loss",
    "spatial_attention",
    "spatial_relation_loss",
    "srd_loss",
    "sskd_terms",
    "standardize",
    "teacher_weights",
    "teacher_relations",
    "triplet_cosines",
    "vid_loss",
    "virtual_teacher",
    "virtual_teacher_loss",
]
