"""From detections to findings, one module per step.

- ``specks``     the calcification specks inside a lesion box (segmentation, sizes in mm);
- ``lesions``    detections in stored pixels -> :class:`~MicrocalcAI.core.records.Lesion` records;
- ``risk``       image -> breast -> exam risk, categories from the model's operating points;
- ``threshold``  re-thresholding finished findings without the model (Slicer slider, scripts).
"""

__all__: list[str] = []
