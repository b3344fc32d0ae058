"""The C4 ROI head of the MoCo / Barlow Twins detection protocol, registered with Detectron2.

Detectron2's ``Res5ROIHeads`` ends with res5's last residual sum, whose output is not
normalised; with a self-supervised backbone fine-tuned under SyncBN, the protocol adds one
norm layer (of ``MODEL.RESNETS.NORM``) after res5 so the box/mask predictors see normalised
features. Importing this module registers ``Res5ROIHeadsExtraNorm``.
"""
from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    @classmethod
    def _build_res5_block(cls, cfg):
        res5, out_channels = super()._build_res5_block(cfg)
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return res5, out_channels
