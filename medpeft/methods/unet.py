"""U-Net: the paper's fully trained FCN-UNet baseline row, a whole segmenter of its own (no frozen backbone)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import UserError
from .base import Method
from .registry import register


@register
@dataclass
class UNet(Method):
    """``segmentation_models_pytorch``'s ``Unet`` with a ``encoder`` encoder (default ResNet-34), every weight random
    (``encoder_weights=None``) and trained from scratch; segmentation tasks only. The backbone options
    (``--backbone``, ``--weights``, ``--pretrained``) do not apply to it."""

    name = "unet"
    standalone_segmenter = True
    encoder: str = "resnet34"

    def standalone(self, num_classes: int) -> nn.Module | None:
        try:
            import segmentation_models_pytorch as smp
        except ImportError:
            raise UserError("method 'unet' needs segmentation-models-pytorch: pip install 'medpeft[seg]'") from None
        try:
            return smp.Unet(encoder_name=self.encoder, encoder_weights=None, classes=num_classes)
        except (KeyError, ValueError) as err:
            raise self.option_error("encoder", f"is not a segmentation_models_pytorch encoder ({err})") from None
