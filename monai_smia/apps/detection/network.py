"""The detection victim: a small 2D MONAI RetinaNet (ResNet + 64-channel FPN) and its RetinaNetDetector.

The detector is the third victim task of SMIA (Qi et al., "Stabilized Medical Image Attacks",
ICLR 2021, arXiv 2103.05232). It is built from MONAI's own detection stack with no torchvision
operator: MONAI's :class:`~monai.networks.blocks.backbone_fpn_utils.BackboneWithFPN` (whose layer
getter is torchvision's ``IntermediateLayerGetter``, so :class:`ResNetFPN` supplies its own),
:class:`~monai.apps.detection.utils.ATSS_matcher.ATSSMatcher`, MONAI's hard-negative sampler and
MONAI's NMS (inside the box selector).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets.resnet import ResNet
from torch import nn

__all__ = ["IntermediateLayers", "ResNetFPN", "ATSSRetinaNetDetector", "retinanet_network", "retinanet_detector"]


class IntermediateLayers(nn.ModuleDict):
    """The children of ``backbone`` up to the last of ``return_layers``, returning those layers' outputs.

    Same behaviour as torchvision's ``IntermediateLayerGetter`` (which MONAI's ``BackboneWithFPN``
    imports, and which does not load against the CPU torch used here), written for MONAI ResNets.

    Args:
        backbone: a module whose children run in order (a MONAI ``ResNet``).
        return_layers: ``{child name: output name}``.
    """

    def __init__(self, backbone: nn.Module, return_layers: dict[str, str]) -> None:
        names = [n for n, _ in backbone.named_children()]
        missing = set(return_layers) - set(names)
        if missing:
            raise ValueError(f"return_layers {sorted(missing)} are not children of the backbone ({names}).")
        last = max(names.index(n) for n in return_layers)
        super().__init__(OrderedDict((n, m) for n, m in list(backbone.named_children())[: last + 1]))
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class ResNetFPN(BackboneWithFPN):
    """MONAI's :class:`BackboneWithFPN` on a MONAI ResNet, with :class:`IntermediateLayers` as its body.

    Args:
        backbone: MONAI ``ResNet``.
        returned_layers: ResNet stages fed to the FPN (1..4).
        in_channels_list: channels of those stages.
        out_channels: FPN channels (64 keeps a 2D checkpoint small; 256 makes the heads alone about 19 MB).
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        backbone: nn.Module,
        returned_layers: Sequence[int],
        in_channels_list: Sequence[int],
        out_channels: int,
        spatial_dims: int,
    ) -> None:
        nn.Module.__init__(self)
        self.body = IntermediateLayers(backbone, {f"layer{k}": str(i) for i, k in enumerate(returned_layers)})
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=spatial_dims,
            in_channels_list=list(in_channels_list),
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(spatial_dims),
        )
        self.out_channels = out_channels


class ATSSRetinaNetDetector(RetinaNetDetector):
    """MONAI's :class:`RetinaNetDetector` restricted to MONAI's ATSS matcher.

    The parent's matcher dispatch starts with ``isinstance(matcher, torchvision Matcher)``, which
    raises when torchvision is absent; this class matches with ATSS only (same results).
    """

    def compute_anchor_matched_idxs(
        self,
        anchors: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        num_anchor_locs_per_level: Sequence[int],
    ) -> list[torch.Tensor]:
        """Per image, the matched ground-truth index of each anchor (-1: background, -2: ignored)."""
        if not isinstance(getattr(self, "proposal_matcher", None), ATSSMatcher):
            raise ValueError("ATSSRetinaNetDetector needs an ATSS matcher: call set_atss_matcher(...) first.")
        matched = []
        for anchors_i, targets_i in zip(anchors, targets):
            boxes = targets_i[self.target_box_key]
            if boxes.numel() == 0:
                matched.append(torch.full((anchors_i.shape[0],), -1, dtype=torch.int64, device=anchors_i.device))
                continue
            _, idx = self.proposal_matcher(
                boxes.to(anchors_i), anchors_i, num_anchor_locs_per_level, self.num_anchors_per_loc
            )
            matched.append(idx)
        return matched


def retinanet_network(
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 1,
    num_anchors: int = 3,
    block_inplanes: Sequence[int] = (16, 32, 64, 128),
    layers: Sequence[int] = (1, 1, 1, 1),
    returned_layers: Sequence[int] = (2, 3, 4),
    fpn_channels: int = 64,
    size_divisible: int = 16,
) -> RetinaNet:
    """A small RetinaNet: a basic-block MONAI ResNet (stride-1 stem, no max pool, so small lesions keep
    their pixels) with a ``fpn_channels``-channel FPN on ``returned_layers`` plus one max-pooled level."""
    backbone = ResNet(
        block="basic", layers=list(layers), block_inplanes=list(block_inplanes), spatial_dims=spatial_dims,
        n_input_channels=in_channels, conv1_t_size=3, conv1_t_stride=1, no_max_pool=True, num_classes=1,
    )  # fmt: skip
    in_list = [block_inplanes[k - 1] for k in returned_layers]
    features = ResNetFPN(backbone, returned_layers, in_list, fpn_channels, spatial_dims)
    return RetinaNet(spatial_dims, num_classes, num_anchors, features, size_divisible=size_divisible)


def retinanet_detector(
    network: RetinaNet,
    feature_map_scales: Sequence[float] = (1, 2, 4, 8),
    base_anchor_shapes: Sequence[Sequence[float]] = ((6, 6), (4, 8), (8, 4)),
    score_thresh: float = 0.02,
    nms_thresh: float = 0.3,
    detections_per_img: int = 20,
    atss_candidates: int = 4,
    negatives_per_image: int = 64,
) -> ATSSRetinaNetDetector:
    """Wrap ``network`` in a MONAI :class:`RetinaNetDetector` with ATSS matching, hard-negative sampling
    and MONAI's NMS; targets use the keys ``"boxes"`` and ``"labels"`` (mode ``xyxy``)."""
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=feature_map_scales, base_anchor_shapes=base_anchor_shapes
    )
    detector = ATSSRetinaNetDetector(network=network, anchor_generator=anchors)
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_atss_matcher(num_candidates=atss_candidates, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=negatives_per_image, positive_fraction=0.3, min_neg=16, pool_size=20
    )
    detector.set_box_selector_parameters(
        score_thresh=score_thresh, topk_candidates_per_level=100, nms_thresh=nms_thresh,
        detections_per_img=detections_per_img, apply_sigmoid=True,
    )  # fmt: skip
    return detector
