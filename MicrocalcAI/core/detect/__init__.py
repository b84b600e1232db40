"""Detection: the Faster R-CNN + FPN network, its weights and manifest, and tiled inference.

``network`` builds the model, ``manifest`` describes a trained model (classes, spacing, tiling,
operating points, checksum), ``weights`` loads and saves checked weights, ``tiles`` runs the
network over the tiles that touch the breast and merges their boxes.
"""
