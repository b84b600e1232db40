"""Shared builders for the findings, risk, re-thresholding, outputs and Slicer tests:
synthetic images, model entries and findings records.

Kept out of conftest.py on purpose: these are plain functions, imported explicitly by the
tests that need them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from MicrocalcAI.core.detect.manifest import ModelSpec, RiskCategory
from MicrocalcAI.core.records import ImageFindings, Lesion, ModelInfo, OodCheck, Risk, Speck


def synthetic_mammogram_patch(
    shape: tuple[int, int],
    spacing_mm: tuple[float, float],
    specks_mm: Sequence[tuple[float, float, float]],
    *,
    contrast: float = 0.25,
    noise: float = 0.01,
    gradient: float = 0.2,
    seed: int = 0,
) -> np.ndarray:
    """A [0, 1] image with a smooth background (ramp + slow wave), Gaussian noise and bright
    disks at the given (x mm, y mm, diameter mm) positions."""
    rng = np.random.default_rng(seed)
    rr, cc = np.indices(shape)
    y = (rr + 0.5) * spacing_mm[0]
    x = (cc + 0.5) * spacing_mm[1]
    img = 0.3 + gradient * x / max(x.max(), 1e-9) + 0.1 * np.sin(y / 7.0)
    for xm, ym, d in specks_mm:
        img[(x - xm) ** 2 + (y - ym) ** 2 <= (d / 2.0) ** 2] += contrast
    img += rng.normal(0.0, noise, shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def model_spec(categories: Optional[list[tuple[str, float]]] = None, score_threshold: float = 0.3) -> ModelSpec:
    """A manifest entry (no weights file) with these risk categories and default threshold."""
    spec = ModelSpec(
        name="test-model",
        version="9.9",
        file="w.safetensors",
        sha256="ab" * 32,
        backbone="mobilenet_v2",
        score_threshold=score_threshold,
    )
    if categories is not None:
        spec.risk_categories = [RiskCategory(n, p) for n, p in categories]
    return spec


def model_info() -> ModelInfo:
    return ModelInfo(name="test-model", version="9.9", sha256="ab" * 32, backbone="mobilenet_v2", spacing_mm=0.1)


def lesion(
    id: int,
    label: str,
    p: float,
    box: tuple[float, float, float, float] = (10.0, 20.0, 40.0, 60.0),
    *,
    spacing: tuple[float, float] = (0.1, 0.1),
    mask: Optional[np.ndarray] = None,
    origin: Optional[tuple[int, int]] = None,
) -> Lesion:
    """A lesion whose speck mask has a few irregular specks (or ``mask``), specks derived from it."""
    x0, y0, x1, y1 = box
    if origin is None:
        origin = (int(math.floor(y0)), int(math.floor(x0)))
    if mask is None:
        mask = np.zeros((int(math.ceil(y1)) - origin[0], int(math.ceil(x1)) - origin[1]), dtype=bool)
        mask[2:4, 3:6] = True
        mask[7, 1] = True
        mask[-3:, -2:] = True
        mask[0, 0] = True
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask, structure=np.ones((3, 3)))
    specks = []
    for lab in range(1, n + 1):
        r, c = np.nonzero(labels == lab)
        a_mm2 = r.size * spacing[0] * spacing[1]
        specks.append(
            Speck(
                (origin[1] + c.mean() + 0.5, origin[0] + r.mean() + 0.5),
                int(r.size),
                a_mm2,
                2 * math.sqrt(a_mm2 / math.pi),
            )
        )
    box_mm = (x0 * spacing[1], y0 * spacing[0], x1 * spacing[1], y1 * spacing[0])
    return Lesion(
        id=id, box_px=box, box_mm=box_mm, label=label, score=0.5 + p / 3, p_malignant=p,
        area_mm2=(box_mm[2] - box_mm[0]) * (box_mm[3] - box_mm[1]),
        speck_mask=mask, mask_origin=origin, specks=specks,
    )  # fmt: skip


def image_findings(
    name: str,
    *,
    patient: Optional[str] = "P1",
    study: Optional[str] = "1.2.3",
    laterality: Optional[str] = "L",
    view: Optional[str] = "CC",
    p: float = 0.0,
    lesions: Optional[list[Lesion]] = None,
    spec: Optional[ModelSpec] = None,
    shape: tuple[int, int] = (120, 90),
    spacing: tuple[float, float] = (0.1, 0.1),
    ood: Optional[OodCheck] = None,
) -> ImageFindings:
    """Findings of one image; ``p`` is its risk probability unless ``lesions`` are given.

    With a flagged ``ood`` the category is "indeterminate", as the engine's rule makes it.
    """
    from MicrocalcAI.core.findings.risk import INDETERMINATE, image_probability

    spec = spec or model_spec()
    lesions = lesions if lesions is not None else []
    if lesions:
        p = image_probability(lesions)
    category = INDETERMINATE if ood is not None and ood.flagged else spec.category(p)
    return ImageFindings(
        source=f"/data/{name}.dcm", name=name, image_shape=shape, spacing_mm=spacing,
        spacing_source="ImagerPixelSpacing", photometric="MONOCHROME2", laterality=laterality,
        laterality_source="ImageLaterality", view=view, view_source="ViewCodeSequence",
        presentation_intent="FOR PRESENTATION", patient_id=patient, study_uid=study,
        series_uid=None if study is None else study + ".1", sop_uid=None if study is None else f"{study}.1.{name}",
        manufacturer="ACME", lesions=lesions, risk=Risk(p, category), model=model_info(),
        score_threshold=0.3, warnings=["spacing assumed"] if spacing[0] != spacing[1] else [],
        timings_s={"detect": 1.25, "total": 2.5}, ood=ood,
    )  # fmt: skip


def ood_check(flagged: bool = True, score: float = 7.5, threshold: float = 5.0) -> OodCheck:
    """An out-of-distribution check as the OOD stage would report it (built by hand: the
    records are plain dataclasses, so the outputs can be tested without that stage)."""
    reasons = ["noise level 3.1x the training range at this grey level", "finest detail blurred (sharpness 0.21)"]
    return OodCheck(
        score=score,
        threshold=threshold,
        flagged=flagged,
        reasons=reasons if flagged else [],
        measurements={"spacing_mm": 0.05, "noise_ratio": 3.1, "sharpness": 0.21, "feature_distance": 7.5},
    )


def assert_findings_equal(a: ImageFindings, b: ImageFindings) -> None:
    """Field-by-field equality, comparing speck masks as arrays (dataclass == cannot)."""
    for f in dataclasses.fields(ImageFindings):
        if f.name == "lesions":
            continue
        assert getattr(a, f.name) == getattr(b, f.name), f.name
    assert len(a.lesions) == len(b.lesions)
    for la, lb in zip(a.lesions, b.lesions):
        for f in dataclasses.fields(Lesion):
            va, vb = getattr(la, f.name), getattr(lb, f.name)
            if f.name == "speck_mask":
                assert va.dtype == vb.dtype == bool and va.shape == vb.shape and np.array_equal(va, vb)
            else:
                assert va == vb, f.name
                assert type(va) is type(vb), f.name


_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _type_ok(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def schema_errors(
    value: Any, schema: dict[str, Any], root: Optional[dict[str, Any]] = None, where: str = "$"
) -> list[str]:
    """The subset of JSON Schema that findings.schema.json uses, checked recursively.

    Stand-in for the `jsonschema` package, which is not installed here.
    """
    root = root or schema
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, root, where)
    errors: list[str] = []
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} != const {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, t) for t in types):
            return errors + [f"{where}: {type(value).__name__} is not {types}"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} <= exclusiveMinimum {schema['exclusiveMinimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing required {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors += schema_errors(item, props[key], root, f"{where}.{key}")
            elif extra is False:
                errors.append(f"{where}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, root, f"{where}.{key}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += schema_errors(item, schema["items"], root, f"{where}[{i}]")
    return errors
