"""Visual exam reports (MicrocalcAI.core.outputs.report): HTML + PDF per exam, checked by
independent programs: pdftoppm renders the PDF pages, headless Chromium opens the HTML.

One real run feeds every test: ``microcalcai detect --report`` on a simulated four-view exam
of one patient (R/L CC and MLO), the bundled simulated sample (three known clusters) and one
real CBIS-DDSM film (no pixel spacing, so the "spacing assumed" warning must show).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from MicrocalcAI.cli import main as cli_main
from MicrocalcAI.core.findings.risk import breast_findings, exam_findings
from MicrocalcAI.core.outputs.findings_json import load_image_json
from MicrocalcAI.core.outputs.overlay import CLASS_COLOURS, SPECK_COLOUR
from MicrocalcAI.core.outputs.report import REPORT_FOLDER, reports_from_folder, write_exam_reports
from MicrocalcAI.core.outputs.report.hanging import exam_images, view_label
from MicrocalcAI.core.outputs.report.pictures import Frame, lesion_crop, load_view, view_picture
from MicrocalcAI.core.standardise import chest_wall_on_left

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "Resources" / "Samples" / "sim_R_CC.dcm"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cbis_cases) -> dict[str, Path]:
    """Simulate one four-view exam, then ``detect --report`` it with the sample and a real film."""
    root = tmp_path_factory.mktemp("report")
    sim = root / "sim"
    assert cli_main(["simulate", "--out", str(sim), "-n", "4", "--seed", "3", "--quiet"]) == 0
    film = root / "film" / "cbis_lcc.dcm"
    film.parent.mkdir()
    shutil.copyfile(cbis_cases[0]["lcc"], film)
    out = root / "out"
    code = cli_main(["detect", str(sim / "images"), str(SAMPLE), str(film), "--out", str(out), "--report", "--quiet"])
    assert code == 0
    return {"root": root, "out": out, "reports": out / REPORT_FOLDER, "sim": sim, "film": film}


def _reports(run, suffix: str) -> dict[str, Path]:
    return {p.stem: p for p in sorted(run["reports"].glob(f"*{suffix}"))}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _sim_exam(run) -> str:
    return next(stem for stem in _reports(run, ".html") if stem.startswith("SIM_00000_"))


# --------------------------------------------------------------------------- one report per exam


def test_one_html_and_one_pdf_per_exam_and_no_temporary_files(run):
    exams = _csv(run["out"] / "exams.csv")
    assert len(exams) == 3  # the simulated patient, the sample, the film
    html, pdf = _reports(run, ".html"), _reports(run, ".pdf")
    assert len(html) == len(pdf) == 3 and set(html) == set(pdf)
    assert all(p.stat().st_size > 10_000 for p in [*html.values(), *pdf.values()])
    assert not [p.name for p in run["reports"].iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    # Every patient of exams.csv has its report.
    assert {row["patient_id"] for row in exams} == {stem.rsplit("_", 1)[0] for stem in html}


def test_report_shows_the_risks_of_the_tables_with_their_colours(run):
    html = _reports(run, ".html")[_sim_exam(run)].read_text(encoding="utf-8")
    exam = next(r for r in _csv(run["out"] / "exams.csv") if r["patient_id"] == "SIM_00000")
    colours = {"low": "#2e7d32", "intermediate": "#ef6c00", "high": "#c62828"}
    assert (
        f'background: {colours[exam["category"]]}">Exam risk {float(exam["probability"]):.2f} {exam["category"]}'
        in html
    )
    for breast in (r for r in _csv(run["out"] / "breasts.csv") if r["patient_id"] == "SIM_00000"):
        side = {"R": "Right", "L": "Left"}[breast["laterality"]]
        assert f"{side} {float(breast['probability']):.2f} {breast['category']}" in html
    for image in (r for r in _csv(run["out"] / "images.csv") if r["patient_id"] == "SIM_00000"):
        label = f"{image['laterality']} {image['view']}"
        assert re.search(
            rf'<span class="label">{label}</span><span class="badge" style="background: {colours[image["category"]]}">'
            rf"{float(image['probability']):.2f} {image['category']}</span>",
            html,
        ), label


def test_views_hang_right_breast_left_cc_then_mlo_back_to_back(run):
    html = _reports(run, ".html")[_sim_exam(run)].read_text(encoding="utf-8")
    assert re.findall(r'<span class="label">([RL?] [A-Z?]+)</span>', html) == ["R CC", "L CC", "R MLO", "L MLO"]
    images = [load_image_json(p) for p in sorted(run["out"].glob("SIM_00000_*.json"))]
    assert len(images) == 4
    for f in images:
        view = load_view(f)
        shown = np.asarray(view_picture(f, view).convert("L"), dtype=np.float32)
        # Back to back: the right breast's chest wall on the right of its picture, the left's on the left.
        assert chest_wall_on_left(shown > 0.15 * shown.max()) == (f.laterality == "L"), view_label(f)


def test_every_lesion_has_a_row_with_its_close_up(run):
    html = _reports(run, ".html")[_sim_exam(run)].read_text(encoding="utf-8")
    images = [load_image_json(p) for p in sorted(run["out"].glob("SIM_00000_*.json"))]
    expected = sorted(f"{view_label(f)} &middot; {les.id}" for f in images for les in f.lesions)
    assert expected, "the simulated exam should have lesions"
    assert sorted(re.findall(r'<td class="ref">([^<]+)</td>', html)) == expected
    assert len(re.findall(r'<img src="data:image/png;base64,[^"]+" alt="[^"]+ lesion \d+">', html)) == len(expected)


def test_model_training_data_warnings_and_notice_are_in_the_report(run):
    from MicrocalcAI.core.detect.manifest import resolve_model

    spec = resolve_model(None)
    film = next(p for stem, p in _reports(run, ".html").items() if stem.startswith("Mass-"))
    html = film.read_text(encoding="utf-8")
    assert f"{spec.name} {spec.version}" in html
    assert spec.training_data[:80].replace("'", "&#39;") in html
    assert "Research software. Not for clinical use." in html
    assert "spacing assumed 0.05 mm" in html and "pixel spacing unknown: assumed 0.05 mm" in html
    sample = next(p for stem, p in _reports(run, ".html").items() if stem.startswith("SIM_SAMPLE"))
    assert "spacing assumed" not in sample.read_text(encoding="utf-8")  # the sample has its spacing


# --------------------------------------------------------------------------- pictures


def test_view_picture_draws_boxes_and_specks_where_the_lesions_are(run):
    f = load_image_json(run["out"] / "sim_R_CC.json")
    assert len(f.lesions) >= 3  # the sample's three known clusters
    view = load_view(f)
    picture = np.asarray(view_picture(f, view))
    rows, cols = view.image01.shape
    scale = picture.shape[1] / cols
    frame = Frame(columns=cols, mirror=view.mirror, x0=0, y0=0, scale=scale, size=(picture.shape[1], picture.shape[0]))
    for lesion in f.lesions:
        x0, y0, x1, y1 = (int(round(v)) for v in frame.box(lesion.box_px))
        edge = picture[max(y0, 0) : y1 + 1, max(x0, 0) : x0 + 2].reshape(-1, 3)  # the box's left side
        assert (np.abs(edge.astype(int) - CLASS_COLOURS[lesion.label]).sum(axis=1) < 30).mean() > 0.5
        crop = np.asarray(lesion_crop(f, view, lesion)).reshape(-1, 3)
        if lesion.speck_count:
            assert (np.abs(crop.astype(int) - SPECK_COLOUR).sum(axis=1) < 30).sum() > 10
        assert (np.abs(crop.astype(int) - CLASS_COLOURS[lesion.label]).sum(axis=1) < 30).sum() > 100


def test_a_view_stored_the_other_way_round_is_mirrored_back_with_its_marks(run, tmp_path):
    """A right breast stored with its chest wall on the left is shown mirrored, boxes included."""
    import dataclasses

    import pydicom

    f = load_image_json(run["out"] / "sim_R_CC.json")
    ds = pydicom.dcmread(SAMPLE)
    ds.decompress()
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
    flipped_path = tmp_path / "flipped.dcm"
    ds.save_as(flipped_path)
    cols = f.image_shape[1]
    lesions = []
    for les in f.lesions:
        x0, y0, x1, y1 = les.box_px
        r0, c0 = les.mask_origin
        lesions.append(
            dataclasses.replace(
                les,
                box_px=(cols - x1, y0, cols - x0, y1),
                speck_mask=les.speck_mask[:, ::-1].copy(),
                mask_origin=(r0, cols - (c0 + les.speck_mask.shape[1])),
            )
        )
    flipped = dataclasses.replace(f, source=str(flipped_path), input_fingerprint=None, lesions=lesions)
    original, mirrored = load_view(f), load_view(flipped)
    assert not original.mirror and mirrored.mirror
    a = np.asarray(view_picture(f, original), dtype=np.int32)
    b = np.asarray(view_picture(flipped, mirrored), dtype=np.int32)
    assert a.shape == b.shape
    for colour in (CLASS_COLOURS["malignant"], SPECK_COLOUR):
        in_a = np.abs(a - colour).sum(axis=2) < 30
        in_b = np.abs(b - colour).sum(axis=2) < 30
        assert in_a.sum() > 20 and (in_a & in_b).sum() / (in_a | in_b).sum() > 0.8, colour
    for les_a, les_b in zip(f.lesions, lesions):
        crop_a = np.asarray(lesion_crop(f, original, les_a), dtype=np.float32)
        crop_b = np.asarray(lesion_crop(flipped, mirrored, les_b), dtype=np.float32)
        assert crop_a.shape == crop_b.shape and np.abs(crop_a - crop_b).mean() < 8


# --------------------------------------------------------------------------- the PDF, rendered


def _render(pdf: Path, folder: Path, dpi: int = 60) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["pdftoppm", "-r", str(dpi), "-png", str(pdf), str(folder / "page")], check=True, timeout=120)
    return sorted(folder.glob("page-*.png"), key=lambda p: int(p.stem.split("-")[1]))


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm (poppler-utils) is not installed")
def test_pdf_pages_show_the_views_marks_and_close_ups_without_overflow(run, tmp_path):
    dpi = 60
    html = _reports(run, ".html")
    for stem, pdf in _reports(run, ".pdf").items():
        n_lesions = html[stem].read_text(encoding="utf-8").count('<td class="ref">')
        pages = _render(pdf, tmp_path / stem, dpi)
        assert len(pages) >= 2, stem
        for page in pages:
            pixels = np.asarray(Image.open(page).convert("RGB"), dtype=np.int32)
            h, w = pixels.shape[:2]
            assert abs(w / h - 297 / 210) < 0.01, (stem, page.name)  # A4 landscape
            margin = int(8 / 25.4 * dpi)  # nothing may spill into the 9 mm side margins
            for side in (pixels[:, :margin], pixels[:, w - margin :], pixels[:margin]):
                assert (side.min(axis=2) > 235).all(), (stem, page.name, "content outside the page margins")
        first = np.asarray(Image.open(pages[0]).convert("RGB"), dtype=np.int32)
        # The views sit on a black band: its rows are mostly black; the images inside are not blank.
        band = np.flatnonzero((first.max(axis=2) < 25).mean(axis=1) > 0.3)
        assert band.size > 0.45 * first.shape[0], stem
        views = first[band.min() : band.max() + 1]
        grey = views.mean(axis=2)
        assert (grey > 60).mean() > 0.05 and grey.std() > 25, stem
        # Marks: pure class colours drawn on the views (the badges use darker shades).
        red = (views[..., 0] > 220) & (views[..., 1] < 70) & (views[..., 2] < 70)
        yellow = (views[..., 0] > 220) & (views[..., 1] > 220) & (views[..., 2] < 70)
        if n_lesions:
            assert (red | yellow).sum() > 20, stem
            # Close-ups: greyscale pictures in the first column of page 2.
            second = np.asarray(Image.open(pages[1]).convert("L"), dtype=np.float32)
            column = second[int(0.1 * second.shape[0]) :, int(0.03 * second.shape[1]) : int(0.18 * second.shape[1])]
            assert (column < 200).mean() > 0.3 and column.std() > 20, stem


# --------------------------------------------------------------------------- the HTML, self-contained


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action", "background"):
                self.refs.append((tag, name, value or ""))
            if name == "style":
                self.styles.append(value or "")

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def test_html_has_no_external_resource(run):
    for stem, path in _reports(run, ".html").items():
        parser = _Refs()
        parser.feed(path.read_text(encoding="utf-8"))
        assert parser.refs, stem
        for tag, name, value in parser.refs:
            assert value.startswith("data:") or value.startswith("#"), (stem, tag, name, value[:80])
        assert not parser.tags & {"script", "link", "iframe", "object", "embed", "base"}, stem
        for css in parser.styles:
            for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", css):
                assert url.startswith("data:"), (stem, url)
            assert "@import" not in css, stem


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        subprocess.run(["bash", str(REPO / "scripts" / "install_system_tools.sh")], check=False, timeout=900)
        found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed and scripts/install_system_tools.sh could not install it")
    return found


_PROBE = r"""<script>
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var urls = performance.getEntriesByType("resource").map(function (e) { return e.name; });
  document.querySelectorAll("[src], [href]").forEach(function (e) {
    var u = e.getAttribute("src") || e.getAttribute("href");
    if (u.charAt(0) !== "#") { urls.push(u); }
  });
  document.querySelectorAll("*").forEach(function (e) {
    var m = getComputedStyle(e).backgroundImage.match(/url\("?([^")]+)/);
    if (m) { urls.push(m[1]); }
  });
  var fetched = urls.filter(function (n) { return n.indexOf("data:") !== 0; });
  document.title = "PROBE images=" + imgs.length + " broken=" + broken + " fetched=" + fetched.length;
});
</script>"""


def _open_in_chromium(chromium: str, html: str, folder: Path) -> tuple[str, str]:
    """(title set by the probe, browser log) after Chromium loaded ``html`` from a file."""
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "page.html"
    page.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    done = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={folder / 'profile'}",
            "--enable-logging=stderr",
            "--virtual-time-budget=15000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    title = re.search(r"<title>([^<]*)</title>", done.stdout)
    return (title.group(1) if title else ""), done.stderr


def test_html_opens_in_headless_chromium_with_no_missing_resource(run, tmp_path):
    chromium = _chromium()
    # Control: the probe does see a fetched file and a missing one (else a pass would prove nothing).
    html = _reports(run, ".html")[_sim_exam(run)].read_text(encoding="utf-8")
    (tmp_path / "control").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "control" / "present.png")
    extra = '<img src="present.png" alt="x"><img src="missing.png" alt="y">'
    title, _ = _open_in_chromium(chromium, html.replace("</body>", extra + "</body>"), tmp_path / "control")
    assert "broken=1 fetched=2" in title, title
    for stem, path in _reports(run, ".html").items():
        html = path.read_text(encoding="utf-8")
        n_images = html.count("<img ")
        title, log = _open_in_chromium(chromium, html, tmp_path / stem)
        assert title == f"PROBE images={n_images} broken=0 fetched=0", (stem, title, log[-2000:])
        assert "Failed to load resource" not in log and "ERR_FILE_NOT_FOUND" not in log, stem


# --------------------------------------------------------------------------- microcalcai report OUTDIR


def test_report_command_rebuilds_reports_and_reports_a_moved_input_without_stopping(run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for path in run["out"].glob("*.json"):
        shutil.copyfile(path, out / path.name)
    # The film was moved after the analysis; the sample carries a warning of a kind added later.
    moved = run["root"] / "moved.dcm"
    film_json = next(p for p in out.glob("*.json") if json.loads(p.read_text())["input"]["source"] == str(run["film"]))
    doc = json.loads(film_json.read_text())
    doc["input"]["source"] = str(moved)
    film_json.write_text(json.dumps(doc))
    sample_json = out / "sim_R_CC.json"
    doc = json.loads(sample_json.read_text())
    doc["warnings"].append("input unlike the training data: test warning 1234")
    sample_json.write_text(json.dumps(doc))
    (out / "broken.json").write_text("{ not json")

    code = cli_main(["report", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"input {moved} is not there any more (moved or deleted?)" in err
    assert "broken.json" in err
    written = sorted(p.name for p in (out / REPORT_FOLDER).iterdir())
    assert len(written) == 4 and not any(name.startswith("Mass-") for name in written), written
    sample_html = next((out / REPORT_FOLDER).glob("SIM_SAMPLE_*.html")).read_text(encoding="utf-8")
    assert "input unlike the training data: test warning 1234" in sample_html


def test_only_html_when_asked_and_same_exams_as_in_memory(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for path in run["out"].glob("SIM_00000_*.json"):
        shutil.copyfile(path, out / path.name)
    result = reports_from_folder(out, formats=("html",))
    assert result.ok and [p.suffix for p in result.written] == [".html"]
    images = [load_image_json(p) for p in sorted(out.glob("*.json"))]
    from MicrocalcAI.core.detect.manifest import resolve_model

    spec = resolve_model(None)
    units = exam_images(images, exam_findings(breast_findings(images, spec.risk_categories), spec.risk_categories))
    assert [u.name for u in units] == [p.stem for p in result.written]
    again = write_exam_reports(images, tmp_path / "again", spec=spec, formats=("html",))
    assert [p.name for p in again.written] == [p.name for p in result.written]


def test_report_command_on_a_folder_without_findings_says_so(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path), "--quiet"]) == 2
    assert "no findings JSON" in capsys.readouterr().err


def test_report_says_when_the_findings_were_made_with_other_model_settings(run):
    """The same weights re-calibrated are another entry: its risk categories would be misapplied."""
    from dataclasses import replace

    from MicrocalcAI.core.detect.manifest import resolve_model
    from MicrocalcAI.core.outputs.report.exam_report import build_context

    spec = resolve_model(None)
    images = [load_image_json(p) for p in sorted(run["out"].glob("SIM_00000_*.json"))]
    assert {f.model.settings_sha256 for f in images} == {spec.settings_sha256}
    (unit,) = exam_images(images, exam_findings(breast_findings(images, spec.risk_categories), spec.risk_categories))
    assert not [w for w in build_context(unit, spec)["warnings"] if w["view"] == "model"]
    rethresholded = replace(spec, score_threshold=0.9)
    (warning,) = [w for w in build_context(unit, rethresholded)["warnings"] if w["view"] == "model"]
    assert "other model settings" in warning["text"] and spec.settings_sha256[:12] in warning["text"]
