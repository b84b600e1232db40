"""Training a detector: data loading through the inference read/standardise path, the loop,
checkpoints and export to a checked weights file plus manifest entry."""
