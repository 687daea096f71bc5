"""Models: teacher and student built with timm, offline (:mod:`.factory`), and the CIFAR-style
architectures of the CRD paper's table, registered into timm by a plugin (:mod:`.cifar`)."""

from kdzoo.models.factory import (
    cached_pretrained_file,
    check_label_sets,
    check_model_name,
    check_pair,
    classifier_classes,
    create_model,
    load_weights,
)

__all__ = [
    "cached_pretrained_file",
    "check_label_sets",
    "check_model_name",
    "check_pair",
    "classifier_classes",
    "create_model",
    "load_weights",
]
