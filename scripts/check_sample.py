"""Compare MicrocalcAI's findings on a simulated sample with the sample's known clusters.

Usage: python scripts/check_sample.py FINDINGS.json TRUTH.json

A known cluster counts as found when a reported lesion box overlaps it (IoU >= 0.2) or the
lesion's centre lies inside it (:func:`MicrocalcAI.core.boxes.finds`, the rule the evaluation
uses). Exit status 1 when a cluster is missed, so the demo makes a regression visible.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MicrocalcAI.core.boxes import box_iou, finds  # noqa: E402


def main(findings_path: str, truth_path: str) -> int:
    with open(findings_path, encoding="utf-8") as fh:
        findings = json.load(fh)
    with open(truth_path, encoding="utf-8") as fh:
        truth = json.load(fh)
    lesions = findings["lesions"]
    missed = 0
    print(f"\nknown clusters in {truth['file']} vs. what MicrocalcAI reported:")
    for i, known in enumerate(truth["lesions"], 1):
        box = known["box_px"]
        finders = [les for les in lesions if finds(les["box_px"], box)]
        match = max(finders, key=lambda les: float(box_iou([les["box_px"]], [box])[0, 0]), default=None)
        if match is not None:
            print(
                f"  cluster {i} ({known['class']:9s} at x={box[0]:.0f}-{box[2]:.0f}, y={box[1]:.0f}-{box[3]:.0f}): "
                f"found as L{match['id']} {match['label']} p_malignant={match['p_malignant']:.2f}"
            )
        else:
            missed += 1
            print(
                f"  cluster {i} ({known['class']:9s} at x={box[0]:.0f}-{box[2]:.0f}, y={box[1]:.0f}-{box[3]:.0f}): MISSED"
            )
    extra = sum(1 for les in lesions if not any(finds(les["box_px"], k["box_px"]) for k in truth["lesions"]))
    print(f"  {len(truth['lesions']) - missed}/{len(truth['lesions'])} known clusters found, {extra} other mark(s)")
    return 1 if missed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
