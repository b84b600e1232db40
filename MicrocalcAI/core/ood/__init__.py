"""The out-of-distribution ("unsure") signal: is this image like what the model was trained on?

- :mod:`~MicrocalcAI.core.ood.statistics`: input statistics at the input's own pixel scale
  (spacing, noise against grey level, sharpness, bits used, breast area);
- :mod:`~MicrocalcAI.core.ood.features`: the image's backbone/FPN descriptor, captured by a
  hook during the detection pass;
- :mod:`~MicrocalcAI.core.ood.reference`: the model's fitted reference (side file named in
  ``ModelSpec.ood``), the distance and the :class:`~MicrocalcAI.core.records.OodCheck`.

The pipeline (:class:`MicrocalcAI.core.pipeline.Analyzer`) fills ``ImageFindings.ood``;
docs/confidence.md says what the score means and how well it separates.
"""

from MicrocalcAI.core.ood.statistics import STATISTICS, input_statistics

__all__ = ["STATISTICS", "input_statistics"]
