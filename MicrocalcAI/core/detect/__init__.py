"""Detection: the Faster R-CNN + FPN network, its weights and manifest, and tiled inference.

One module per step, in the order a tile's pixels meet them:

- ``manifest``  what a trained model is (classes, spacing, tiling, operating points, checksum);
- ``network``   builds the network (:func:`~MicrocalcAI.core.detect.network.build_detector`);
- ``weights``   loads and saves checked weights;
- ``tiling``    where the canonical image is cut into tiles that touch the breast;
- ``merge``     how the tiles' boxes become one lesion list;
- ``calibration`` the model's calibration of score and p_malignant, applied after merging;
- ``run``       :func:`~MicrocalcAI.core.detect.run.detect`: the network over the tiles, merged.
"""

__all__: list[str] = []
