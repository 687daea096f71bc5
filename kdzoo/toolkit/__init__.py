"""The building blocks methods share, in one place for method authors: ``from kdzoo.toolkit import ...``.

* Connectors (:mod:`.connectors`): trainable maps of a student feature map onto a teacher map's
  shape: :class:`ConvRegressor` (FitNets' regressor), :func:`connector` (a 1x1 conv + BN, or nothing
  when the shapes already agree: AB's, OFD's).
* Views (:mod:`.views`): extra views of a batch to train on (:class:`kdzoo.View`):
  :func:`rand_augment` (FixMatch's RandAugment on normalised tensors, MLKD's strong view),
  :func:`cutout`, :func:`rotation` (SSKD's quarter turns).
* Per-sample state (:mod:`.memory`): :class:`SampleMemory` (one vector per training sample, CRD's
  bank), :class:`EmbeddingQueue` (MoCo's queue), :class:`ReplicatedState` (buffers kept equal across
  processes by gathered updates, never broadcast), :func:`gather_rows` / :func:`local_rows` /
  :func:`mean_across` (what processes exchange), :func:`uniform_rows`, and :func:`check_fits` (a
  one-line error naming the size that fits before allocating).
* Shapes (:mod:`.shapes`): :func:`average_pooled`, :func:`pooled_to_smaller` (two maps made
  comparable position by position).
"""

from kdzoo.toolkit.connectors import ConvRegressor, Unchanged, connector
from kdzoo.toolkit.memory import (
    EmbeddingQueue,
    ReplicatedState,
    SampleMemory,
    check_fits,
    free_bytes,
    gather_rows,
    local_rows,
    mean_across,
    uniform_rows,
)
from kdzoo.toolkit.shapes import average_pooled, pooled_to_smaller
from kdzoo.toolkit.views import OPERATIONS, cutout, rand_augment, rotation

__all__ = [
    "OPERATIONS",
    "ConvRegressor",
    "EmbeddingQueue",
    "ReplicatedState",
    "SampleMemory",
    "Unchanged",
    "average_pooled",
    "check_fits",
    "connector",
    "cutout",
    "free_bytes",
    "gather_rows",
    "local_rows",
    "mean_across",
    "pooled_to_smaller",
    "rand_augment",
    "rotation",
    "uniform_rows",
]
