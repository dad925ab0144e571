"""Pooling layers: drop-in replacements for torch.nn's, and variable-size pooling layers.

``MaxPool2d`` and friends subclass their torch.nn namesakes, so they take the
same constructor arguments, print the same ``extra_repr`` and pass
``isinstance`` checks; only ``forward`` runs pool_ext's kernels.
"""

import torch
from torch import nn

from . import functional as F

__all__ = [
    "MaxPool1d", "MaxPool2d", "MaxPool3d",
    "AvgPool1d", "AvgPool2d", "AvgPool3d",
    "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
    "VariableMaxPool1d", "VariableMaxPool2d", "VariableMaxPool3d",
    "VariableAvgPool1d", "VariableAvgPool2d", "VariableAvgPool3d",
    "SpatialPyramidPool2d", "replace_pooling",
]


class MaxPool1d(nn.MaxPool1d):
    """``torch.nn.MaxPool1d`` on pool_ext's kernels: ``(N, C, L)`` -> ``(N, C, L_out)``.

    ``padding`` may also be ``"same"`` or ``"valid"``.
    """

    def forward(self, input):
        return F.max_pool1d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class MaxPool2d(nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` on pool_ext's kernels: ``(N, C, H, W)`` -> ``(N, C, H_out, W_out)``.

    ``padding`` may also be ``"same"`` or ``"valid"``.
    """

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class MaxPool3d(nn.MaxPool3d):
    """``torch.nn.MaxPool3d`` on pool_ext's kernels: ``(N, C, D, H, W)`` -> ``(N, C, D_out, H_out, W_out)``."""

    def forward(self, input):
        return F.max_pool3d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool1d(nn.AvgPool1d):
    """``torch.nn.AvgPool1d`` on pool_ext's kernels: ``(N, C, L)`` -> ``(N, C, L_out)``."""

    def forward(self, input):
        return F.avg_pool1d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)


class AvgPool2d(nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` on pool_ext's kernels: ``(N, C, H, W)`` -> ``(N, C, H_out, W_out)``."""

    def forward(self, input):
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


class AvgPool3d(nn.AvgPool3d):
    """``torch.nn.AvgPool3d`` on pool_ext's kernels: ``(N, C, D, H, W)`` -> ``(N, C, D_out, H_out, W_out)``."""

    def forward(self, input):
        return F.avg_pool3d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


class AdaptiveMaxPool1d(nn.AdaptiveMaxPool1d):
    """``torch.nn.AdaptiveMaxPool1d`` on pool_ext's kernels: ``(N, C, L)`` -> ``(N, C, output_size)``."""

    def forward(self, input):
        return F.adaptive_max_pool1d(input, self.output_size, self.return_indices)


class AdaptiveMaxPool2d(nn.AdaptiveMaxPool2d):
    """``torch.nn.AdaptiveMaxPool2d`` on pool_ext's kernels: ``(N, C, H, W)`` -> ``(N, C, *output_size)``."""

    def forward(self, input):
        return F.adaptive_max_pool2d(input, self.output_size, self.return_indices)


class AdaptiveMaxPool3d(nn.AdaptiveMaxPool3d):
    """``torch.nn.AdaptiveMaxPool3d`` on pool_ext's kernels: ``(N, C, D, H, W)`` -> ``(N, C, *output_size)``."""

    def forward(self, input):
        return F.adaptive_max_pool3d(input, self.output_size, self.return_indices)


class AdaptiveAvgPool1d(nn.AdaptiveAvgPool1d):
    """``torch.nn.AdaptiveAvgPool1d`` on pool_ext's kernels: ``(N, C, L)`` -> ``(N, C, output_size)``."""

    def forward(self, input):
        return F.adaptive_avg_pool1d(input, self.output_size)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``torch.nn.AdaptiveAvgPool2d`` on pool_ext's kernels: ``(N, C, H, W)`` -> ``(N, C, *output_size)``."""

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)


class AdaptiveAvgPool3d(nn.AdaptiveAvgPool3d):
    """``torch.nn.AdaptiveAvgPool3d`` on pool_ext's kernels: ``(N, C, D, H, W)`` -> ``(N, C, *output_size)``."""

    def forward(self, input):
        return F.adaptive_avg_pool3d(input, self.output_size)


class _VariablePool(nn.Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def extra_repr(self):
        return f"output_size={self.output_size}"


class _VariableMaxPool(_VariablePool):
    def __init__(self, output_size, return_indices=False):
        super().__init__(output_size)
        self.return_indices = return_indices

    def extra_repr(self):
        return f"output_size={self.output_size}, return_indices={self.return_indices}"


class VariableMaxPool1d(_VariableMaxPool):
    """Masked adaptive max pooling of padded sequences.

    ``forward(input (N, C, L), sizes (N,) lengths)`` -> ``(N, C, output_size)``.
    """

    def forward(self, input, sizes):
        return F.variable_max_pool1d(input, self.output_size, sizes, self.return_indices)


class VariableMaxPool2d(_VariableMaxPool):
    """Adaptive max pooling of each image of a padded batch over its own size.

    ``forward(input (N, C, H, W), sizes (N, 2))`` -> ``(N, C, *output_size)``.
    """

    def forward(self, input, sizes):
        return F.variable_max_pool2d(input, self.output_size, sizes, self.return_indices)


class VariableMaxPool3d(_VariableMaxPool):
    """``forward(input (N, C, D, H, W), sizes (N, 3))`` -> ``(N, C, *output_size)``."""

    def forward(self, input, sizes):
        return F.variable_max_pool3d(input, self.output_size, sizes, self.return_indices)


class VariableAvgPool1d(_VariablePool):
    """Masked adaptive average pooling of padded sequences (``output_size=1``: masked mean).

    ``forward(input (N, C, L), sizes (N,) lengths)`` -> ``(N, C, output_size)``.
    """

    def forward(self, input, sizes):
        return F.variable_avg_pool1d(input, self.output_size, sizes)


class VariableAvgPool2d(_VariablePool):
    """``forward(input (N, C, H, W), sizes (N, 2))`` -> ``(N, C, *output_size)``."""

    def forward(self, input, sizes):
        return F.variable_avg_pool2d(input, self.output_size, sizes)


class VariableAvgPool3d(_VariablePool):
    """``forward(input (N, C, D, H, W), sizes (N, 3))`` -> ``(N, C, *output_size)``."""

    def forward(self, input, sizes):
        return F.variable_avg_pool3d(input, self.output_size, sizes)


class SpatialPyramidPool2d(nn.Module):
    """Spatial pyramid pooling: ``(N, C, H, W)`` of any size -> ``(N, C * sum(l * l for l in levels))``.

    ``forward(input, sizes=None)``: with ``sizes`` (``Tensor[N, 2]``), each image of a
    padded batch is pooled over its own size.
    """

    def __init__(self, levels=(1, 2, 4), mode="max"):
        super().__init__()
        if mode not in ("max", "avg"):
            raise ValueError(f"SpatialPyramidPool2d: mode must be 'max' or 'avg', but got '{mode}'")
        self.levels = tuple(int(l) for l in levels)
        self.mode = mode

    def extra_repr(self):
        return f"levels={self.levels}, mode={self.mode!r}"

    def forward(self, input, sizes=None):
        return F.spatial_pyramid_pool2d(input, self.levels, self.mode, sizes)


_REPLACEMENTS = {
    nn.MaxPool1d: MaxPool1d, nn.MaxPool2d: MaxPool2d, nn.MaxPool3d: MaxPool3d,
    nn.AvgPool1d: AvgPool1d, nn.AvgPool2d: AvgPool2d, nn.AvgPool3d: AvgPool3d,
    nn.AdaptiveMaxPool1d: AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d: AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d: AdaptiveMaxPool3d, nn.AdaptiveAvgPool1d: AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d: AdaptiveAvgPool3d,
}


def replace_pooling(model: nn.Module) -> nn.Module:
    """Swaps, in place, every torch.nn pooling layer of ``model`` for pool_ext's; returns ``model``.

    Each such layer object becomes pool_ext's layer of the same kind (its
    class changes): its settings, hooks and training flag stay, and so does
    every reference to it, so a layer shared between parents, or also held
    outside the model's modules, is swapped everywhere. A model that is itself
    a pooling layer is swapped too. Left as they are: subclasses of torch.nn's
    layers (which may override ``forward``) and layers whose ``forward`` was
    patched on the instance (wrappers that call torch's ``forward``).
    """
    for module in model.modules():
        cls = _REPLACEMENTS.get(type(module))
        if cls is not None and "forward" not in module.__dict__:
            module.__class__ = cls
    return model
