"""Model manifests: which weights exist, what frame they expect, and how to judge their output.

A manifest is a JSON file (``Resources/Models/manifest.json`` for the bundled models) with a
list of model entries. The entry, not the code, says the model's pixel spacing, backbone,
tiling, operating points and training provenance, so that a retrained model from another
hospital is used correctly just by shipping its entry next to its weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from MicrocalcAI.core.detect.calibration import Calibration
from MicrocalcAI.core.equalise import NoiseEqualisation
from MicrocalcAI.core.errors import ChecksumError, InputError, ModelError

__all__ = [
    "CLASSES",
    "DEFAULT_RISK_CATEGORIES",
    "MANIFEST_NAME",
    "MERGE_FLOOR",
    "ModelSpec",
    "RiskCategory",
    "category_for",
    "default_models_dir",
    "load_manifest",
    "resolve_model",
    "sha256_file",
    "verify_weights",
]


MANIFEST_NAME = "manifest.json"
CLASSES = ("background", "benign", "malignant")
#: Lowest lesion score that takes part in merging tiles (MicrocalcAI.core.detect.merge) and in evaluation
#: sweeps: reporting at a threshold t >= MERGE_FLOOR is filtering the lesions merged here.
MERGE_FLOOR = 0.05


@dataclass(frozen=True)
class RiskCategory:
    """A risk category applies from ``min_probability`` (inclusive) up to the next category."""

    name: str
    min_probability: float


#: Categories of a manifest entry that names none.
DEFAULT_RISK_CATEGORIES = (RiskCategory("low", 0.0), RiskCategory("intermediate", 0.2), RiskCategory("high", 0.5))


def category_for(probability: float, categories: Sequence[RiskCategory]) -> str:
    """The risk category of a probability: the last category whose ``min_probability`` <= p
    (the lowest category when p is below all of them)."""
    if not categories:
        raise ModelError("no risk categories given: a model's manifest entry defines at least one")
    ordered = sorted(categories, key=lambda c: c.min_probability)
    chosen = ordered[0].name
    for cat in ordered:
        if probability >= cat.min_probability:
            chosen = cat.name
    return chosen


@dataclass
class ModelSpec:
    """One model entry of a manifest."""

    name: str
    version: str
    file: str  # weights file name, relative to the manifest's folder (or absolute)
    sha256: str
    backbone: str  # "resnet50", "resnet18" or "mobilenet_v2"
    spacing_mm: float = 0.1  # canonical isotropic spacing the model was trained at
    #: Spacing assumed for inputs that carry none (warned about in every output).
    assumed_input_spacing_mm: float = 0.05
    classes: tuple[str, ...] = CLASSES
    tile_size: int = 512  # canonical pixels
    tile_overlap: int = 128  # canonical pixels
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)  # canonical pixels, one per FPN level
    #: Default detection threshold on the lesion score (``--threshold`` overrides).
    score_threshold: float = 0.3
    #: Named thresholds on p_malignant (e.g. "high_sensitivity", "balanced").
    operating_points: dict[str, float] = field(default_factory=lambda: {"high_sensitivity": 0.2, "balanced": 0.5})
    #: Ordered by min_probability; category of p = last one whose min_probability <= p.
    risk_categories: list[RiskCategory] = field(default_factory=lambda: list(DEFAULT_RISK_CATEGORIES))
    intended_use: str = "Research only. Not for clinical use."
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Calibration of score and p_malignant (core/detect/calibration.py); None = identity, the
    #: raw network outputs are reported. ``score_threshold``, ``operating_points`` and
    #: ``risk_categories`` are on the calibrated scale when it is set.
    calibration: Optional[Calibration] = None
    #: Out-of-distribution reference side file: {"file": name next to the manifest, "sha256": ...}
    #: (MicrocalcAI.core.ood.reference); None = the model ships none and images get ``ood=None``.
    ood: Optional[dict[str, str]] = None
    #: Noise equalisation before detection (MicrocalcAI.core.equalise): the model was trained
    #: with it and needs it; None = the model sees the normalised image as it is.
    noise_equalisation: Optional[NoiseEqualisation] = None
    #: Folder of the manifest this entry came from; weights paths resolve against it.
    folder: Optional[str] = None

    @property
    def weights_path(self) -> Path:
        path = Path(self.file)
        if not path.is_absolute() and self.folder:
            path = Path(self.folder) / path
        return path

    @property
    def reporting_floor(self) -> float:
        """Lowest lesion score this model can report: :data:`MERGE_FLOOR` on the calibrated scale."""
        if self.calibration is None:
            return MERGE_FLOOR
        return float(self.calibration.score(MERGE_FLOOR))

    @property
    def settings_sha256(self) -> str:
        """Checksum of everything in this entry that decides what the model reports: the
        weights, the input frame and tiling, the noise equalisation, the calibration, the OOD
        reference and the thresholds and categories. Recorded in every findings file, so that
        a re-calibrated or re-thresholded entry of the same weights is not taken for the
        model that wrote earlier outputs (resume, Dask workers). Name, version, the card text
        and the metrics are left out: they describe the model, they do not change it."""
        data = self.to_json()
        for key in ("name", "version", "file", "intended_use", "training_data", "metrics"):
            data.pop(key, None)
        if "ood" in data:  # the reference's content, not where this install keeps it
            data["ood"] = data["ood"]["sha256"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()

    def category(self, probability: float) -> str:
        """The risk category of a probability, from this model's operating points."""
        return category_for(probability, self.risk_categories)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("folder", None)
        if data.get("ood") is None:
            data.pop("ood", None)
        data["classes"] = list(self.classes)
        data["anchor_sizes"] = list(self.anchor_sizes)
        if self.calibration is None:
            data.pop("calibration")  # an entry without one stays as it was written
        else:
            data["calibration"] = self.calibration.to_json()
        if self.noise_equalisation is None:
            data.pop("noise_equalisation")
        else:
            data["noise_equalisation"] = self.noise_equalisation.to_json()
        return data


def settings_mismatch(made_with: Iterable[Optional[str]], spec: Optional[ModelSpec]) -> Optional[str]:
    """Why ``spec``'s operating points may not be those the findings were made with, or None.

    ``made_with`` are the findings' ``model.settings_sha256`` (None in files older than schema
    1.2, which are not judged). The same weights re-calibrated or re-thresholded are another
    entry, whose scores, thresholds and risk categories differ.
    """
    if spec is None:
        return None
    made = {m for m in made_with if m}
    if not made or made == {spec.settings_sha256}:
        return None
    return (
        "the findings were made with other model settings (calibration, thresholds or risk categories; "
        f"settings {', '.join(sorted(m[:12] for m in made))}) than the entry {spec.name} {spec.version} "
        f"({spec.settings_sha256[:12]}) whose operating points are used here: pass --model with the manifest "
        "that made them"
    )


def default_models_dir() -> Path:
    """Where the bundled manifest lives.

    ``MICROCALCAI_MODELS_DIR`` wins; then ``Resources/Models`` next to the package (source
    checkout and Slicer install); then the copy shipped inside the pip wheel.
    """
    env = os.environ.get("MICROCALCAI_MODELS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2]  # the MicrocalcAI package folder
    for candidate in (here.parent / "Resources" / "Models", here / "_resources" / "Models"):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    return here.parent / "Resources" / "Models"


def _spec_from_json(entry: dict[str, Any], folder: Path) -> ModelSpec:
    """One manifest entry -> ModelSpec, every field type-checked: a bad entry is a ModelError."""
    where = f"{folder / MANIFEST_NAME}"
    if not isinstance(entry, dict):
        raise ModelError(f"malformed model entry in {where}: expected an object, got {type(entry).__name__}")
    name = entry.get("name")
    try:
        data = dict(entry)
        cats = [RiskCategory(str(c["name"]), float(c["min_probability"])) for c in data.pop("risk_categories", [])]
        calibration = data.pop("calibration", None)
        equalisation = data.pop("noise_equalisation", None)
        unknown = set(data) - set(ModelSpec.__dataclass_fields__)
        if unknown:
            raise ModelError(f"model entry {name!r} in {where}: unknown fields {sorted(unknown)}")
        for key in ("name", "version", "file", "sha256", "backbone"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f"'{key}' must be a non-empty string")
        spec = ModelSpec(**data)
        spec.spacing_mm = float(spec.spacing_mm)
        spec.assumed_input_spacing_mm = float(spec.assumed_input_spacing_mm)
        spec.score_threshold = float(spec.score_threshold)
        spec.tile_size = int(spec.tile_size)
        spec.tile_overlap = int(spec.tile_overlap)
        spec.classes = tuple(str(c) for c in spec.classes)
        spec.anchor_sizes = tuple(int(a) for a in spec.anchor_sizes)
        spec.operating_points = {str(k): float(v) for k, v in dict(spec.operating_points).items()}
        spec.metrics = dict(spec.metrics)
        if spec.ood is not None:
            ood = dict(spec.ood)
            if not all(isinstance(ood.get(key), str) and ood[key] for key in ("file", "sha256")):
                raise ValueError("'ood' must be an object with non-empty strings 'file' and 'sha256'")
            spec.ood = {"file": ood["file"], "sha256": ood["sha256"]}
        if cats:
            spec.risk_categories = cats
        if calibration is not None:
            spec.calibration = Calibration.from_json(calibration)
        spec.noise_equalisation = NoiseEqualisation.from_setting(equalisation)
        spec.folder = str(folder)
    except ModelError:
        raise
    except (TypeError, KeyError, ValueError, AttributeError, InputError) as exc:
        raise ModelError(f"malformed model entry {name!r} in {where}: {exc}") from exc
    if spec.classes != CLASSES:
        raise ModelError(f"model {spec.name!r}: classes must be {list(CLASSES)}, got {list(spec.classes)}")
    if not (spec.spacing_mm > 0 and spec.assumed_input_spacing_mm > 0 and 0 <= spec.tile_overlap < spec.tile_size):
        raise ModelError(f"model {spec.name!r} in {where}: invalid spacing or tiling")
    if not 0.0 <= spec.score_threshold <= 1.0 or not all(0.0 <= v <= 1.0 for v in spec.operating_points.values()):
        raise ModelError(f"model {spec.name!r} in {where}: thresholds must lie in [0, 1]")
    return spec


def load_manifest(path: Optional[os.PathLike | str] = None) -> tuple[Optional[str], list[ModelSpec]]:
    """Read a manifest file (or the folder holding ``manifest.json``): (default name, entries)."""
    path = Path(path) if path is not None else default_models_dir()
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"model manifest not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"model manifest {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ModelError(f"model manifest {path} has no 'models' list")
    specs = [_spec_from_json(e, path.parent) for e in data["models"]]
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        raise ModelError(f"model manifest {path}: 'default' must be a model name")
    return default, specs


def resolve_model(model: Optional[str] = None) -> ModelSpec:
    """Find a model by name in the bundled manifest, or from a path.

    ``model`` may be None (the bundled default), a model name, a manifest file/folder (its
    default entry), or a weights file whose sibling ``manifest.json`` lists it by file name.
    """
    if model is not None and Path(model).exists():
        path = Path(model)
        if path.is_dir() or path.suffix == ".json":
            default, specs = load_manifest(path)
            return _pick(specs, default, str(path))
        default, specs = load_manifest(path.parent)
        for spec in specs:
            if spec.weights_path.resolve() == path.resolve():
                return spec
        raise ModelError(
            f"weights {path} are not listed in {path.parent / MANIFEST_NAME}; a model needs a manifest entry"
        )
    default, specs = load_manifest()
    return _pick(specs, model or default, "the bundled manifest")


def _pick(specs: list[ModelSpec], name: Optional[str], where: str) -> ModelSpec:
    if not specs:
        raise ModelError(f"no models in {where}")
    if name is None:
        return specs[0]
    for spec in specs:
        if spec.name == name:
            return spec
    raise ModelError(f"no model named {name!r} in {where}; known: {[s.name for s in specs]}")


def sha256_file(path: os.PathLike | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(spec: ModelSpec) -> Path:
    """Return the weights path after checking it exists and matches the manifest's sha256."""
    path = spec.weights_path
    if not path.is_file():
        raise ModelError(f"weights file of model {spec.name!r} not found: {path}")
    actual = sha256_file(path)
    if actual.lower() != spec.sha256.lower():
        raise ChecksumError(
            f"weights {path} do not match model {spec.name!r}: sha256 {actual}, manifest says {spec.sha256}"
        )
    return path
