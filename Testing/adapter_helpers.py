"""Tiny datasets in the published layouts of CBIS-DDSM, INbreast, VinDr-Mammo, mini-MIAS and COCO.

Each writer builds, under a temporary folder, the files a user gets from the dataset's
distributor, following the format's published description (column names, file naming, XML
structure, coordinate conventions), with real DICOM/PGM/PNG files small enough (128 x 96) for
the adapter tests to run in seconds. The lesion geometry is chosen so that the expected
boxes can be written by hand in the tests.

Images are 96 rows x 128 columns throughout (``ROWS``, ``COLS``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from _reader_helpers import make_mammo_dicom, make_png, mammo_like

ROWS, COLS = 96, 128


def _mammo(seed: int, side: str = "L") -> np.ndarray:
    return mammo_like(ROWS, COLS, side=side, seed=seed)


def _mask(boxes: Sequence[tuple[int, int, int, int]], shape: tuple[int, int] = (ROWS, COLS)) -> np.ndarray:
    """8-bit ROI mask (255 inside) whose non-zero pixels are the given [x0, y0, x1, y1) rectangles."""
    mask = np.zeros(shape, dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = 255
    return mask


# --------------------------------------------------------------------------------- CBIS-DDSM

CBIS_HEADER = [
    "patient_id", "breast density", "left or right breast", "image view", "abnormality id", "abnormality type",
    "calc type", "calc distribution", "assessment", "pathology", "subtlety", "image file path",
    "cropped image file path", "ROI mask file path",
]  # fmt: skip


def _uid_path(top: str, n: int, name: str = "000000.dcm") -> str:
    """A CSV path as released: <case folder>/<study UID>/<series UID>/<file>."""
    return f"{top}/1.3.6.1.4.1.9590.100.1.2.{100 + n}/1.3.6.1.4.1.9590.100.1.2.{200 + n}/{name}"


def write_cbis_ddsm(root: Path) -> Path:
    """A CBIS-DDSM download: two calc CSVs and a ``CBIS-DDSM/`` tree in both TCIA layouts.

    Training CSV (descriptive NBIA folder names, so CSV paths resolve by case folder):

    * line 2, P_00005 RIGHT CC abn 1, BENIGN_WITHOUT_CALLBACK: mask = two blobs
      [30, 20, 50, 35) and [52, 30, 60, 40) -> box [30, 20, 60, 40]; the abnormality folder
      holds the crop (40 x 30) and the mask (full size) in one "cropped images" series;
    * line 3, P_00005 RIGHT CC abn 2, MALIGNANT: mask [100, 70, 110, 90) (same image);
    * line 4, P_00007 LEFT MLO abn 1, BENIGN: mask [0, 0, 5, 7);
    * line 5, P_00008 LEFT CC abn 1, MALIGNANT: the mask is 64 x 48, not the image's size ->
      the image is left out;
    * line 6, P_00009 LEFT CC abn 1: no DICOM folder at all -> row skipped;
    * line 7, P_00007 LEFT MLO abn 1 again, a mass row -> skipped (not a calcification).

    Test CSV (classic UID folder names, paths exist as written, mask and crop paths SWAPPED
    as in some released rows): line 2, P_00010 LEFT CC, MALIGNANT, mask [64, 48, 65, 49).
    """
    tree = root / "CBIS-DDSM"

    def full(top: str, seed: int, side: str) -> Path:
        path = tree / top / "08-07-2016-DDSM-23157" / "1.000000-full mammogram images-38548" / "1-1.dcm"
        path.parent.mkdir(parents=True)
        return make_mammo_dicom(
            path,
            _mammo(seed, side),
            spacing=None,
            laterality=None,
            view=None,
            SeriesDescription="full mammogram images",
        )

    def roi(top: str, mask: np.ndarray, crop_shape: tuple[int, int] = (30, 40)) -> None:
        folder = tree / top / "08-30-2017-DDSM-09081" / "1.000000-cropped images-94682"
        folder.mkdir(parents=True)
        crop = np.full(crop_shape, 900, dtype=np.uint16)
        make_mammo_dicom(
            folder / "1-1.dcm", crop, spacing=None, laterality=None, view=None, SeriesDescription="cropped images"
        )
        make_mammo_dicom(
            folder / "1-2.dcm", mask, spacing=None, laterality=None, view=None, SeriesDescription="ROI mask images"
        )

    full("Calc-Training_P_00005_RIGHT_CC", 1, "R")
    roi("Calc-Training_P_00005_RIGHT_CC_1", _mask([(30, 20, 50, 35), (52, 30, 60, 40)]))
    roi("Calc-Training_P_00005_RIGHT_CC_2", _mask([(100, 70, 110, 90)]))
    full("Calc-Training_P_00007_LEFT_MLO", 2, "L")
    roi("Calc-Training_P_00007_LEFT_MLO_1", _mask([(0, 0, 5, 7)]))
    full("Calc-Training_P_00008_LEFT_CC", 3, "L")
    roi("Calc-Training_P_00008_LEFT_CC_1", _mask([(1, 1, 9, 9)], shape=(48, 64)))

    def row(patient: str, side: str, view: str, abn: int, kind: str, pathology: str, n: int) -> list[str]:
        top = f"Calc-Training_{patient}_{side}_{view}"
        return [
            patient,
            "2",
            side,
            view,
            str(abn),
            kind,
            "PLEOMORPHIC",
            "CLUSTERED",
            "4",
            pathology,
            "3",
            _uid_path(top, n),
            _uid_path(f"{top}_{abn}", n + 50),
            _uid_path(f"{top}_{abn}", n + 50, "000001.dcm") + "\n",
        ]

    train = [
        row("P_00005", "RIGHT", "CC", 1, "calcification", "BENIGN_WITHOUT_CALLBACK", 1),
        row("P_00005", "RIGHT", "CC", 2, "calcification", "MALIGNANT", 1),
        row("P_00007", "LEFT", "MLO", 1, "calcification", "BENIGN", 2),
        row("P_00008", "LEFT", "CC", 1, "calcification", "MALIGNANT", 3),
        row("P_00009", "LEFT", "CC", 1, "calcification", "MALIGNANT", 4),
        row("P_00007", "LEFT", "MLO", 1, "mass", "BENIGN", 2),
    ]
    _write_csv(root / "calc_case_description_train_set.csv", CBIS_HEADER, train)

    # Classic layout: UID folders exactly as the CSV names them.
    top = "Calc-Test_P_00010_LEFT_CC"
    image_rel = _uid_path(top, 10)
    crop_rel = _uid_path(f"{top}_1", 60, "000000.dcm")
    mask_rel = _uid_path(f"{top}_1", 60, "000001.dcm")
    for rel, pixels in (
        (image_rel, _mammo(4, "L")),
        (crop_rel, np.full((20, 20), 700, dtype=np.uint16)),
        (mask_rel, _mask([(64, 48, 65, 49)])),
    ):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        make_mammo_dicom(tree / rel, pixels, spacing=None, laterality=None, view=None)
    test = [
        [
            "P_00010",
            "3",
            "LEFT",
            "CC",
            "1",
            "calcification",
            "AMORPHOUS",
            "CLUSTERED",
            "4",
            "MALIGNANT",
            "2",
            image_rel,
            mask_rel,
            crop_rel + "\n",  # cropped and ROI paths swapped, as in some released rows
        ]
    ]
    _write_csv(root / "calc_case_description_test_set.csv", CBIS_HEADER, test)
    return root


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------------- INbreast

_PLIST_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
    '<plist version="1.0">\n<dict>\n\t<key>Images</key>\n\t<array>\n\t\t<dict>\n'
    "\t\t\t<key>ImageIndex</key>\n\t\t\t<integer>0</integer>\n"
)


def inbreast_xml(rois: Sequence[tuple[str, Sequence[tuple[float, float]]]]) -> str:
    """An INbreast/OsiriX ROI plist: one image, ROIs with Name, NumberOfPoints, Point_mm, Point_px."""
    parts = [
        _PLIST_HEAD,
        f"\t\t\t<key>NumberOfROIs</key>\n\t\t\t<integer>{len(rois)}</integer>\n",
        "\t\t\t<key>ROIs</key>\n\t\t\t<array>\n",
    ]
    for index, (name, points) in enumerate(rois):
        cx = sum(p[0] for p in points) / len(points)
        cy = sum(p[1] for p in points) / len(points)
        parts.append("\t\t\t\t<dict>\n")
        parts.append("\t\t\t\t\t<key>Area</key>\n\t\t\t\t\t<real>0</real>\n")
        parts.append(f"\t\t\t\t\t<key>Center</key>\n\t\t\t\t\t<string>({cx:.4f}, {cy:.4f}, 0.0000)</string>\n")
        parts.append("\t\t\t\t\t<key>Dev</key>\n\t\t\t\t\t<real>0</real>\n")
        parts.append(f"\t\t\t\t\t<key>IndexInImage</key>\n\t\t\t\t\t<integer>{index}</integer>\n")
        parts.append("\t\t\t\t\t<key>Max</key>\n\t\t\t\t\t<real>0</real>\n")
        parts.append("\t\t\t\t\t<key>Mean</key>\n\t\t\t\t\t<real>0</real>\n")
        parts.append("\t\t\t\t\t<key>Min</key>\n\t\t\t\t\t<real>0</real>\n")
        parts.append(f"\t\t\t\t\t<key>Name</key>\n\t\t\t\t\t<string>{name}</string>\n")
        parts.append(f"\t\t\t\t\t<key>NumberOfPoints</key>\n\t\t\t\t\t<integer>{len(points)}</integer>\n")
        parts.append("\t\t\t\t\t<key>Point_mm</key>\n\t\t\t\t\t<array>\n")
        for x, y in points:
            parts.append(f"\t\t\t\t\t\t<string>({x * 0.5:.6f}, {y * 0.5:.6f}, 0.000000)</string>\n")
        parts.append("\t\t\t\t\t</array>\n\t\t\t\t\t<key>Point_px</key>\n\t\t\t\t\t<array>\n")
        for x, y in points:
            parts.append(f"\t\t\t\t\t\t<string>({x:.6f}, {y:.6f})</string>\n")
        parts.append("\t\t\t\t\t</array>\n")
        parts.append("\t\t\t\t\t<key>Total</key>\n\t\t\t\t\t<real>0</real>\n")
        parts.append("\t\t\t\t\t<key>Type</key>\n\t\t\t\t\t<integer>15</integer>\n")
        parts.append("\t\t\t\t</dict>\n")
    parts.append("\t\t\t</array>\n\t\t</dict>\n\t</array>\n</dict>\n</plist>\n")
    return "".join(parts)


def write_inbreast(root: Path) -> Path:
    """An INbreast release: ``INbreast Release 1.0/{AllDICOMs, AllXML, INbreast.csv}``.

    DICOMs carry ImagerPixelSpacing 0.5 mm (so the default 5 mm linkage is 10 px and the
    0.5 mm margin 1 px), except 20586960 which has none (-> INbreast's 0.07 mm is recorded).

    * 20586908 R CC, BI-RADS 4c: a Cluster outline (10,12) (40,15) (35,44) (12,40) -> one
      lesion [10, 12, 40, 44]; its Calcification points and a Mass ROI add nothing.
    * 20586934 L MLO, BI-RADS 2: Calcification ROIs only: specks (20,20) (24,22) (22,27)
      -> [19, 19, 25, 28]; specks (80,60) (86,60) (92,62) (90,70) and a 3-point outline
      (95,64) (99,64) (97,68) -> [79, 59, 100, 71]; a pair (60,85) (64,85) and a lone
      speck (120,5) are too small a group.
    * 20586960 R MLO, BI-RADS 1: no XML -> a negative image.
    * 22614097 L CC: XML with calcifications but no row in INbreast.csv -> left out.
    * 22614127 R CC, BI-RADS 5: XML is truncated -> reported.
    """
    release = root / "INbreast Release 1.0"
    dicoms, xmls = release / "AllDICOMs", release / "AllXML"
    dicoms.mkdir(parents=True)
    xmls.mkdir(parents=True)
    cases = [
        ("20586908", "R", "CC", "4c", 0.5),
        ("20586934", "L", "MLO", "2", 0.5),
        ("20586960", "R", "MLO", "1", None),
        ("22614097", "L", "CC", None, 0.5),
        ("22614127", "R", "CC", "5", 0.5),
    ]
    rows = []
    for n, (image_id, side, view, birads, spacing) in enumerate(cases):
        name = f"{image_id}_6c613a14b80a85{n:02d}_MG_{side}_{view}_ANON.dcm"
        make_mammo_dicom(
            dicoms / name,
            _mammo(10 + n, side),
            spacing=None if spacing is None else (spacing, spacing),
            laterality=side,
            view=view,
        )
        if birads is not None:
            rows.append(["removed", "removed", side, view, "201001", image_id, "2", birads])
    _write_csv(
        release / "INbreast.csv",
        ["Patient ID", "Patient age", "Laterality", "View", "Acquisition date", "File Name", "ACR", "Bi-Rads"],
        rows,
        delimiter=";",
    )
    (xmls / "20586908.xml").write_text(
        inbreast_xml(
            [
                ("Calcification", [(15, 20)]),
                ("Cluster", [(10, 12), (40, 15), (35, 44), (12, 40)]),
                ("Calcification", [(30, 30)]),
                ("Mass", [(60, 10), (90, 10), (90, 40)]),
            ]
        ),
        encoding="utf-8",
    )
    (xmls / "20586934.xml").write_text(
        inbreast_xml(
            [
                ("Calcification", [(20, 20)]),
                ("Calcification", [(24, 22)]),
                ("Calcification", [(22, 27)]),
                ("Calcification", [(80, 60)]),
                ("Calcification", [(86, 60)]),
                ("Calcification", [(92, 62)]),
                ("Calcification", [(90, 70)]),
                ("Calcification", [(95, 64), (99, 64), (97, 68)]),
                ("Calcification", [(60, 85)]),
                ("Calcification", [(64, 85)]),
                ("Calcification", [(120, 5)]),
            ]
        ),
        encoding="utf-8",
    )
    (xmls / "22614097.xml").write_text(
        inbreast_xml(
            [
                ("Calcification", [(20, 20)]),
                ("Calcification", [(21, 21)]),
                ("Calcification", [(22, 22)]),
            ]
        ),
        encoding="utf-8",
    )
    whole = inbreast_xml([("Calcification", [(20, 20)]), ("Calcification", [(21, 21)]), ("Calcification", [(22, 22)])])
    (xmls / "22614127.xml").write_text(whole[: len(whole) // 2], encoding="utf-8")
    return release


# --------------------------------------------------------------------------------- VinDr-Mammo

VINDR_HEADER = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width", "breast_birads",
    "breast_density", "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax", "split",
]  # fmt: skip


def write_vindr_mammo(root: Path) -> Path:
    """A VinDr-Mammo download: ``finding_annotations.csv`` + ``images/<study_id>/<image_id>.dicom``.

    * img_a (training, L CC): "['Suspicious Calcification']" BI-RADS 4 at (10.5, 20.25, 50, 60)
      -> malignant; "['Mass', 'Suspicious Calcification']" BI-RADS 3 at (70, 10, 90, 30) ->
      benign; a plain Mass row is not a calcification.
    * img_b (test, R MLO): Suspicious Calcification BI-RADS 5 at (0, 0, 128, 96) -> malignant.
    * img_c (training): "['No Finding']" -> negative.
    * img_d (training): Suspicious Calcification with an empty finding BI-RADS -> image left out.
    * img_e (training): Suspicious Calcification, but its DICOM is missing -> skipped.
    """

    def image(study: str, image_id: str, seed: int) -> None:
        folder = root / "images" / study
        folder.mkdir(parents=True, exist_ok=True)
        make_mammo_dicom(folder / f"{image_id}.dicom", _mammo(seed), spacing=(0.085, 0.085))

    for study, image_id, seed in (
        ("st1", "img_a", 20),
        ("st2", "img_b", 21),
        ("st1", "img_c", 22),
        ("st3", "img_d", 23),
    ):
        image(study, image_id, seed)

    def row(study, image_id, lat, view, cats, birads, box, split, series="se1"):
        box_cells = [str(v) for v in box] if box else ["", "", "", ""]
        return [
            study,
            series,
            image_id,
            lat,
            view,
            str(ROWS),
            str(COLS),
            "BI-RADS 4",
            "DENSITY C",
            cats,
            birads,
            *box_cells,
            split,
        ]

    rows = [
        row(
            "st1",
            "img_a",
            "L",
            "CC",
            "['Suspicious Calcification']",
            "BI-RADS 4",
            (10.5, 20.25, 50.0, 60.0),
            "training",
        ),
        row(
            "st1", "img_a", "L", "CC", "['Mass', 'Suspicious Calcification']", "BI-RADS 3", (70, 10, 90, 30), "training"
        ),
        row("st1", "img_a", "L", "CC", "['Mass']", "BI-RADS 4", (5, 5, 15, 15), "training"),
        row("st2", "img_b", "R", "MLO", "['Suspicious Calcification']", "BI-RADS 5", (0, 0, 128, 96), "test"),
        row("st1", "img_c", "R", "CC", "['No Finding']", "", None, "training"),
        row("st3", "img_d", "L", "MLO", "['Suspicious Calcification']", "", (1, 1, 9, 9), "training"),
        row("st4", "img_e", "L", "MLO", "['Suspicious Calcification']", "BI-RADS 4", (1, 1, 9, 9), "training"),
    ]
    _write_csv(root / "finding_annotations.csv", VINDR_HEADER, rows)
    return root


# --------------------------------------------------------------------------------- mini-MIAS


def write_pgm(path: Path, pixels: np.ndarray, comment: Optional[str] = "CREATOR: test") -> Path:
    """A binary 8-bit PGM (P5) with an optional header comment, as image tools write them."""
    rows, cols = pixels.shape
    head = "P5\n" + (f"# {comment}\n" if comment else "") + f"{cols} {rows}\n255\n"
    path.write_bytes(head.encode("ascii") + np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return path


MIAS_INFO = """REFNUM BG CLASS SEVERITY X Y RADIUS
mdb001 G CIRC B 535 425 197
mdb002 G NORM
mdb209 G CALC M 47 50 10
mdb210 G CALC B 120 90 15
mdb219 G CALC B
mdb223 D CALC B 20 30 5
mdb223 D CALC B 60 30 5
mdb250 D CALC M 10 10 5
"""


def write_mini_mias(root: Path) -> Path:
    """A mini-MIAS folder: ``Info.txt`` and 128 x 96 ``mdbNNN.pgm`` files (no mdb250.pgm).

    Y is counted from the BOTTOM row (height 96): mdb209 (47, 50, r 10) -> stored centre row
    46 -> [37, 36, 57, 56]; mdb210 (120, 90, r 15) -> row 6 -> clipped [105, 0, 128, 21];
    mdb223 has two CALC rows -> [15, 61, 25, 71] and [55, 61, 65, 71]; mdb219 is a CALC row
    without a centre -> image left out; mdb250 has no image -> skipped.
    """
    folder = root / "all-mias"
    folder.mkdir(parents=True)
    (root / "Info.txt").write_text(MIAS_INFO, encoding="ascii")
    for n, ref in enumerate(("mdb001", "mdb002", "mdb209", "mdb210", "mdb219", "mdb223")):
        write_pgm(folder / f"{ref}.pgm", (mammo_like(ROWS, COLS, seed=30 + n, dtype=np.uint8)))
    return root


# --------------------------------------------------------------------------------- COCO


def write_coco_source(root: Path) -> Path:
    """A user's COCO file ``root/ann/source.json`` with PNG images in ``root/imgs``.

    categories: 7 "Calc-Malignant", 3 "Benign", 9 "mass".
    * image 11 (a.png 128x96): bbox [10, 20, 30, 40] cat 7; bbox [0, 0, 5, 5] cat 3;
      mass [50, 50, 10, 10] cat 9; polygon-only segmentation (60,10)-(80,10)-(70,30) cat 3.
    * image 12 (b.png): declared 100x100 but the file is 128x96 -> skipped.
    * image 13 (missing.png) -> skipped.
    * image 14 (c.png): one bbox of zero width -> the image is left out.
    * image 15 (d.png): no annotation -> negative.
    """
    imgs = root / "imgs"
    imgs.mkdir(parents=True)
    for n, name in enumerate(("a", "b", "c", "d")):
        make_png(imgs / f"{name}.png", mammo_like(ROWS, COLS, seed=40 + n, dtype=np.uint8))
    data = {
        "images": [
            {
                "id": 11,
                "file_name": "../imgs/a.png",
                "width": COLS,
                "height": ROWS,
                "spacing_mm": 0.1,
                "laterality": "left",
                "view": "cc",
            },
            {"id": 12, "file_name": "../imgs/b.png", "width": 100, "height": 100},
            {"id": 13, "file_name": "../imgs/missing.png"},
            {"id": 14, "file_name": "../imgs/c.png"},
            {"id": 15, "file_name": "../imgs/d.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 7, "bbox": [10, 20, 30, 40]},
            {"id": 2, "image_id": 11, "category_id": 3, "bbox": [0, 0, 5, 5]},
            {"id": 3, "image_id": 11, "category_id": 9, "bbox": [50, 50, 10, 10]},
            {"id": 4, "image_id": 11, "category_id": 3, "segmentation": [[60, 10, 80, 10, 70, 30]]},
            {"id": 5, "image_id": 12, "category_id": 7, "bbox": [1, 1, 5, 5]},
            {"id": 6, "image_id": 14, "category_id": 7, "bbox": [1, 1, 0, 5]},
        ],
        "categories": [{"id": 7, "name": "Calc-Malignant"}, {"id": 3, "name": "Benign"}, {"id": 9, "name": "mass"}],
    }
    import json

    (root / "ann").mkdir()
    path = root / "ann" / "source.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
