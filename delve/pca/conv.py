"""The PCA layer of convolutions: every position of every map is an observation of the channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..capture.layer_kinds import shrink_feature_map
from ..common.validation import check_optional_int
from .linear import LinearPCALayer, like

__all__ = ["Conv2DPCALayer"]


class Conv2DPCALayer(LinearPCALayer):
    """Project the channels of ``(N, C, H, W)`` maps onto their leading eigendirections.

    Every spatial position of every sample is one observation of the ``C``
    channels (channelwise, as the tracker's default for convolutions), so the
    layer works for any spatial size; the projection is a 1x1 convolution with
    fixed weights, and the layer has no trainable parameters.

    Parameters
    ----------
    in_filters : int
        Number of channels ``C``.
    threshold : float, default 0.99
        Fraction of the variance the kept directions explain.
    verbose : bool, default True
        Log each fit at INFO level to the ``delve`` logger (silent unless the
        application configures logging).
    gradient_epoch_start : int, default 20
        Accepted for delve 0.1.x scripts; no effect.
    centering : bool, default False
        As in :class:`LinearPCALayer`; 0.1.x's default for convolutions was
        uncentred.
    downsampling : int, optional
        Feature maps with a side longer than this are shrunk (nearest, aspect
        ratio kept, as the tracker's ``interpolation_downsampling`` does)
        before their covariance is accumulated; the projection always acts on
        the full map.

    Examples
    --------
    >>> import torch
    >>> layer = Conv2DPCALayer(3, centering=True)
    >>> _ = layer(torch.randn(2, 3, 8, 8))
    >>> _ = layer.eval()
    >>> layer(torch.randn(1, 3, 5, 7)).shape, len(list(layer.parameters()))
    (torch.Size([1, 3, 5, 7]), 0)
    """

    _feature_dim = 1

    def __init__(
        self,
        in_filters: int,
        threshold: float = 0.99,
        verbose: bool = True,
        gradient_epoch_start: int = 20,
        centering: bool = False,
        downsampling: int | None = None,
    ) -> None:
        super().__init__(
            in_filters,
            threshold=threshold,
            keepdim=True,
            verbose=verbose,
            gradient_epoch_start=gradient_epoch_start,
            centering=centering,
        )
        self.downsampling = check_optional_int("downsampling", downsampling, minimum=1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"Conv2DPCALayer expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        super()._check_input(x)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsampling is not None:
            # As the tracker shrinks feature maps: longest side, aspect ratio kept.
            x = shrink_feature_map(x, "nearest", self.downsampling)
        # A channels-last view; the covariance update gathers it in one pass.
        return x.permute(0, 2, 3, 1)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        weight = like(self.transformation_matrix, x).t()[:, :, None, None]
        return F.conv2d(x, weight, like(self.offset, x))
