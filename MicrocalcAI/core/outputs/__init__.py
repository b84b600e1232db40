"""Output files, one module per format.

- ``paths``          where each image's files go (names inside the output folder);
- ``findings_json``  the versioned findings JSON (write, read back, speck-mask RLE);
- ``overlay``        the overlay PNG;
- ``tables``         the batch CSV tables (images, breasts, exams);
- ``complete``       whether an image's outputs are complete (lets a re-run skip it).

A new output format is a new module here (or a subpackage, like ``dicom/``) with a
``write_*`` function taking :class:`~MicrocalcAI.core.records.ImageFindings`.
"""

__all__: list[str] = []
