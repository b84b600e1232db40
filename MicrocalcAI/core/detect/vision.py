"""The torchvision parts of the detector, imported once, without ``torch._dynamo``.

``torchvision.ops.roi_align`` imports ``torch._dynamo.utils`` at module level for one function,
``is_compile_supported``, which it calls only while ``torch.compile`` traces RoIAlign. Importing
``torch._dynamo`` pulls in sympy, the FX symbolic-shape machinery and parts of
``torch.distributed``: measured with ``python -X importtime`` on the 2-core machine, it was about
90% of torchvision's import time (3.3 s of 3.6 s under load, every ``microcalcai detect`` process
pays it) and ~60 MB resident. Here torchvision is imported with a stand-in
``torch._dynamo.utils`` whose ``is_compile_supported`` imports the real one on its first call, and
the stand-in is removed from ``sys.modules`` right after, so a later ``import torch._dynamo``
(``torch.compile``, ONNX export, training) gets the real package and RoIAlign under
``torch.compile`` behaves exactly as before. Where ``torch._dynamo`` or torchvision's ops are
already imported, nothing is stood in.

Every torchvision name the detector uses comes from this module (:mod:`.network`, :mod:`.merge`).
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

__all__ = [
    "AnchorGenerator",
    "BackboneWithFPN",
    "FastRCNNPredictor",
    "FasterRCNN",
    "GeneralizedRCNNTransform",
    "LastLevelMaxPool",
    "MultiScaleRoIAlign",
    "RoIHeads",
    "TwoMLPHead",
    "box_ops",
    "mobilenet_v2",
    "nms",
    "resnet_fpn_backbone",
]

_STANDINS = ("torch._dynamo", "torch._dynamo.utils")


def is_compile_supported(device_type: str) -> bool:
    """torch._dynamo's own answer, imported when first asked (only under ``torch.compile``)."""
    from torch._dynamo.utils import is_compile_supported as real

    return bool(real(device_type))


@contextlib.contextmanager
def _dynamo_deferred() -> Iterator[None]:
    if any(name in sys.modules for name in _STANDINS) or "torchvision.ops.roi_align" in sys.modules:
        yield
        return
    package, utils = types.ModuleType(_STANDINS[0]), types.ModuleType(_STANDINS[1])
    utils.is_compile_supported = is_compile_supported  # type: ignore[attr-defined]
    package.utils = utils  # type: ignore[attr-defined]
    sys.modules.update(zip(_STANDINS, (package, utils)))
    try:
        yield
    finally:
        for name, standin in zip(_STANDINS, (package, utils)):
            if sys.modules.get(name) is standin:
                del sys.modules[name]


with _dynamo_deferred():
    from torchvision.models import mobilenet_v2
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops import MultiScaleRoIAlign, nms
    from torchvision.ops import boxes as box_ops
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
