"""Models: teacher and student built with timm (:mod:`.factory`), their pretrained weights cached or
downloaded (:mod:`.pretrained`), and the CIFAR-style architectures of the CRD paper's table, registered
into timm by a plugin (:mod:`.cifar`)."""

from kdzoo.models.factory import (
    check_label_sets,
    check_model_name,
    check_pair,
    classifier_classes,
    create_model,
    load_weights,
)
from kdzoo.models.pretrained import cached_pretrained_file, folder_name

__all__ = [
    "cached_pretrained_file",
    "check_label_sets",
    "check_model_name",
    "check_pair",
    "classifier_classes",
    "create_model",
    "folder_name",
    "load_weights",
]
