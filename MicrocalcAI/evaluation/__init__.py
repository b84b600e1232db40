"""Measuring a model on annotated images: lesion matching, metrics, curves and plots.

One implementation serves ``microcalcai evaluate`` and training's validation, so a number in a
training log and in an evaluation report mean the same thing.
"""
