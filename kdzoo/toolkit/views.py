"""Views of a batch of model inputs that methods train on (``kdzoo.View``): a strong augmentation in
the manner of FixMatch's RandAugment (MLKD's strong view) and the four rotations (SSKD).

They work on normalised tensors on the training device, for the whole batch at once (one affine
resampling per round, masks for the per-sample choices), drawing from torch's global RNG. Pixel
operations that need the raw intensities (posterize, solarize, equalize, colour) are left out:
geometric ones, contrast, brightness and sharpness are defined on normalised inputs too. Areas a
transform uncovers and the cutout square hold 0, the data's mean colour after normalisation (the
grey FixMatch's cutout uses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: (name, low, high) of each operation's magnitude, FixMatch's ranges
OPERATIONS = (
    ("identity", 0.0, 1.0),
    ("rotate", -30.0, 30.0),  # degrees
    ("shear_x", -0.3, 0.3),
    ("shear_y", -0.3, 0.3),
    ("translate_x", -0.3, 0.3),  # fraction of the side
    ("translate_y", -0.3, 0.3),
    ("contrast", 0.05, 0.95),  # blend factor with the image's mean
    ("brightness", 0.05, 0.95),  # blend factor with the image's darkest value per channel
    ("sharpness", 0.05, 0.95),  # blend factor with a smoothed copy
)
GEOMETRIC = {"rotate", "shear_x", "shear_y", "translate_x", "translate_y"}


def _affine(op: Tensor, value: Tensor) -> Tensor:
    """Per-sample (B, 2, 3) sampling grids' matrices; the identity where the op is not geometric."""
    names = [name for name, _, _ in OPERATIONS]
    theta = torch.zeros(len(op), 2, 3, device=value.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    angle = torch.deg2rad(value)
    rotate = op == names.index("rotate")
    theta[rotate, 0, 0], theta[rotate, 0, 1] = torch.cos(angle[rotate]), -torch.sin(angle[rotate])
    theta[rotate, 1, 0], theta[rotate, 1, 1] = torch.sin(angle[rotate]), torch.cos(angle[rotate])
    theta[op == names.index("shear_x"), 0, 1] = value[op == names.index("shear_x")]
    theta[op == names.index("shear_y"), 1, 0] = value[op == names.index("shear_y")]
    # grid coordinates span [-1, 1]: a shift by a fraction f of the side is 2 f
    theta[op == names.index("translate_x"), 0, 2] = 2 * value[op == names.index("translate_x")]
    theta[op == names.index("translate_y"), 1, 2] = 2 * value[op == names.index("translate_y")]
    return theta


def _blend(x: Tensor, other: Tensor, factor: Tensor, where: Tensor) -> Tensor:
    """``other + factor (x - other)`` (PIL's ImageEnhance) on the samples ``where`` is true."""
    f = factor.view(-1, 1, 1, 1)
    return torch.where(where.view(-1, 1, 1, 1), other + f * (x - other), x)


def rand_augment(x: Tensor, ops: int = 2) -> Tensor:
    """``ops`` operations per sample drawn with replacement, each at a uniform magnitude, then a
    cutout square of side up to half the image (FixMatch's RandAugment as MLKD uses it)."""
    names = [name for name, _, _ in OPERATIONS]
    low = torch.tensor([lo for _, lo, _ in OPERATIONS], device=x.device)
    high = torch.tensor([hi for _, _, hi in OPERATIONS], device=x.device)
    n = x.shape[0]
    for _ in range(ops):
        op = torch.randint(0, len(OPERATIONS), (n,), device=x.device)
        value = low[op] + (high[op] - low[op]) * torch.rand(n, device=x.device)
        grid = F.affine_grid(_affine(op, value).to(x.dtype), list(x.shape), align_corners=False)
        geometric = torch.isin(op, torch.tensor([names.index(g) for g in GEOMETRIC], device=x.device))
        moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = torch.where(geometric.view(-1, 1, 1, 1), moved, x)
        x = _blend(x, x.mean(dim=(1, 2, 3), keepdim=True), value, op == names.index("contrast"))
        x = _blend(x, x.amin(dim=(2, 3), keepdim=True), value, op == names.index("brightness"))
        kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device, dtype=x.dtype) / 13  # PIL's SMOOTH
        smooth = F.conv2d(
            F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(x.shape[1], 1, 3, 3), groups=x.shape[1]
        )
        x = _blend(x, smooth, value, op == names.index("sharpness"))
    return cutout(x, torch.rand(n, device=x.device) * 0.5)


def cutout(x: Tensor, fraction: Tensor) -> Tensor:
    """A square of side ``fraction`` x the image's side per sample, centred uniformly, set to 0."""
    n, _, h, w = x.shape
    side = (fraction * min(h, w)).view(-1, 1, 1)
    cy = torch.rand(n, 1, 1, device=x.device) * h
    cx = torch.rand(n, 1, 1, device=x.device) * w
    rows = torch.arange(h, device=x.device).view(1, -1, 1) + 0.5
    cols = torch.arange(w, device=x.device).view(1, 1, -1) + 0.5
    inside = ((rows - cy).abs() <= side / 2) & ((cols - cx).abs() <= side / 2)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def rotation(quarter_turns: int):
    """The batch turned ``quarter_turns`` x 90 degrees counter-clockwise (``np.rot90``, PIL's rotate)."""

    def turn(x: Tensor) -> Tensor:
        return torch.rot90(x, quarter_turns, dims=(2, 3))

    turn.__name__ = f"rotate{(quarter_turns % 4) * 90}"
    return turn
