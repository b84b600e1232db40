"""What the detection path imports: heavy modules it does not need stay out of the process.

Every ``microcalcai detect`` process pays its imports before the first image; measured with
``python -X importtime`` (docs/performance.md), SimpleITK (~100 MB resident, ~0.5 s) and
``torch._dynamo`` (pulled in by torchvision's RoIAlign: most of torchvision's import time and
~150 MB resident) were the two that the detector never uses. Checked in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DETECT_PATH = (
    "import MicrocalcAI.cli.detect, MicrocalcAI.core.pipeline, MicrocalcAI.core.batch, MicrocalcAI.core.detect.run, "
    "MicrocalcAI.core.runtime, MicrocalcAI.core.detect.backends, MicrocalcAI.core.outputs.overlay"
)


def _fresh(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return done.stdout.split()


def test_the_detection_path_leaves_out_simpleitk_and_torch_dynamo() -> None:
    loaded = _fresh(f"import sys; {DETECT_PATH}; print('SimpleITK' in sys.modules, 'torch._dynamo' in sys.modules)")
    assert loaded == ["False", "False"]


def test_torch_dynamo_still_imports_for_real_afterwards() -> None:
    # The stand-in used while torchvision loads must not linger: torch.compile, ONNX export and
    # RoIAlign's own compile check get the real torch._dynamo.
    code = (
        f"import sys; {DETECT_PATH}; import torch, torch._dynamo, torch._dynamo.utils; "
        "roi = sys.modules['torchvision.ops.roi_align']; "
        "print(hasattr(torch._dynamo, 'optimize'), roi.is_compile_supported('cpu'), "
        "torch._dynamo.utils.is_compile_supported('cpu'))"
    )
    assert _fresh(code) == ["True", "True", "True"]
