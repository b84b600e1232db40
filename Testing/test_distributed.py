"""Batch inference on Dask: a real LocalCluster and a real command-line scheduler and workers.

Each Dask batch runs the real model on the bundled sample, a real CBIS-DDSM film and small
simulated mammograms with a corrupt file among them, and every output is compared with the
in-process run. Dask workers run torch on one thread; the in-process reference does too here,
because floating-point sums in a different thread count differ in the last bits (see
docs/scale.md).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

import torch  # noqa: E402
from distributed import Client  # noqa: E402

from MicrocalcAI.cli import main as cli_main  # noqa: E402
from MicrocalcAI.core.batch import run_batch  # noqa: E402
from MicrocalcAI.core.distributed import cluster_client  # noqa: E402
from MicrocalcAI.core.outputs.complete import outputs_complete  # noqa: E402
from MicrocalcAI.core.pipeline import Analyzer  # noqa: E402
from MicrocalcAI.core.runtime import configure_cpu  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "Resources" / "Samples" / "sim_R_CC.dcm"
GOOD_TINY = 3


def _tiny(folder: Path, n: int, seed: int) -> list[Path]:
    from _train_helpers import simulate_tiny

    images = simulate_tiny(folder / "sim", n_images=n, seed=seed).parent / "images"
    return sorted(images.glob("*.dcm"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, cbis_cases) -> Path:
    """Real and simulated mammograms plus a corrupt file, in one input folder."""
    data = tmp_path_factory.mktemp("in")
    shutil.copy(SAMPLE, data / "sample.dcm")
    shutil.copy(cbis_cases[0]["rcc"], data / "film.dcm")
    for path in _tiny(tmp_path_factory.mktemp("sim"), GOOD_TINY, seed=5):
        shutil.copy(path, data / path.name)
    (data / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(3000))
    return data


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    """The in-process run, with torch on one thread like each Dask worker.

    Through ``MICROCALCAI_THREADS``, not ``torch.set_num_threads``: the analyzer sizes torch's
    pool itself (:func:`configure_cpu`) when it loads the model, which would undo a bare
    ``set_num_threads(1)`` whenever this process had not configured torch before.
    """
    out = tmp_path_factory.mktemp("local")
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MICROCALCAI_THREADS", "1")
            result = run_batch([inputs], out, analyzer=Analyzer(device="cpu"))
            assert torch.get_num_threads() == 1
    finally:
        configure_cpu()  # the environment is restored: back to this machine's thread count
    assert [Path(p).name for p, _ in result.failed] == ["corrupt.dcm"]
    return out


@pytest.fixture(scope="module")
def client():
    with cluster_client(workers=2) as c:
        yield c


def _without_timing(doc: dict) -> dict:
    doc = dict(doc)
    doc.pop("created")
    doc.pop("timings_s")
    return doc


def _same(a: object, b: object, rel: float = 1e-6) -> bool:
    """Equal, floats to 1e-6 relative: a process of its own may sum in another order even on one
    thread (seen on this CI machine in the 7th significant digit of p_malignant)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=rel)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rel) for x, y in zip(a, b))
    return a == b


def _cell(text: str) -> object:
    """A CSV cell as a float where it reads as one (to compare numbers with :func:`_same`)."""
    try:
        return float(text) if any(ch.isdigit() for ch in text) else text
    except ValueError:
        return text


def assert_same_outputs(expected: Path, actual: Path) -> None:
    """Every file of the in-process run, the same (JSON apart from its timestamp and timings, and
    its floats to 1e-6 relative; CSV's, printed to 6 significant digits, to 1e-5)."""
    names = sorted(p.name for p in expected.iterdir())
    assert sorted(p.name for p in actual.iterdir()) == names
    for name in names:
        a, b = expected / name, actual / name
        if name.endswith(".json"):
            want, got = _without_timing(json.loads(a.read_text())), _without_timing(json.loads(b.read_text()))
            assert _same(want, got), (name, want, got)
        elif name.endswith(".csv"):
            want_rows, got_rows = (
                [[_cell(c) for c in r] for r in csv.reader(f.read_text().splitlines())] for f in (a, b)
            )
            assert _same(want_rows, got_rows, 1e-5), name
        else:
            assert a.read_bytes() == b.read_bytes(), name


def test_local_cluster_writes_what_the_local_run_writes(inputs, reference, client, tmp_path):
    out = tmp_path / "out"
    keys: set[str] = set()

    def watch(fraction: float, message: str) -> None:
        for tasks in client.processing().values():
            keys.update(str(k) for k in tasks)

    result = run_batch([inputs], out, device="cpu", client=client, progress=watch)
    assert [Path(p).name for p, _ in result.failed] == ["corrupt.dcm"]
    assert "corrupt.dcm" in result.failed[0][1] or "DICOM" in result.failed[0][1]
    assert len(result.analysed) == GOOD_TINY + 2
    assert_same_outputs(reference, out)
    stems = [p.name.split(".")[0] for p in inputs.iterdir()]
    assert keys and not [k for k in keys for s in stems if s in k]  # file names are never task keys

    again = run_batch([inputs], out, device="cpu", client=client)  # finished images are skipped
    assert not again.analysed and len(again.skipped) == GOOD_TINY + 2
    assert_same_outputs(reference, out)


def test_the_local_path_never_imports_dask(tmp_path):
    """``import MicrocalcAI``, Slicer and the in-process batch stay free of dask."""
    code = (
        "import sys, MicrocalcAI, MicrocalcAI.cli, MicrocalcAI.core.batch;"
        "from MicrocalcAI.core.batch import run_batch;"
        f"r = run_batch([{str(SAMPLE)!r}], {str(tmp_path)!r}, device='cpu');"
        "assert r.analysed, r.failed;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'));"
        "assert not bad, bad"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_command_line_scheduler_and_workers(inputs, reference, tmp_path, capsys):
    """``dask scheduler`` and ``dask worker`` processes, then ``microcalcai detect --scheduler``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    scheduler_file = tmp_path / "scheduler.json"
    logs = open(tmp_path / "dask.log", "wb")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", str(scheduler_file)],
            env=env,
            stdout=logs,
            stderr=subprocess.STDOUT,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "dask.log").read_text()
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1", "--host", "127.0.0.1"]
                    + ["--no-dashboard"],
                    env=env,
                    stdout=logs,
                    stderr=subprocess.STDOUT,
                )
            )
        with Client(address) as c:
            c.wait_for_workers(2, timeout=90)
        out = tmp_path / "out"
        code = cli_main(
            ["detect", str(inputs), "--out", str(out), "--device", "cpu", "--scheduler", address, "--quiet"]
        )
        err = capsys.readouterr().err
        assert code == 1 and "corrupt.dcm" in err
        assert_same_outputs(reference, out)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()


def _kill_a_busy_worker(client: Client, killed: list[set[str]]):
    """A progress callback that SIGKILLs a worker that is analysing an image, once."""

    def progress(fraction: float, message: str) -> None:
        if killed or fraction <= 0.0:
            return
        busy = {addr: tasks for addr, tasks in client.processing().items() if tasks}
        if not busy:
            return
        addr, tasks = next(iter(busy.items()))
        pid = client.run(os.getpid, workers=[addr])[addr]
        os.kill(pid, signal.SIGKILL)
        killed.append({str(k) for k in tasks})

    return progress


def _no_half_files(out: Path) -> None:
    assert not [p for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.mark.slow
@pytest.mark.parametrize("allowed_failures", [2, 0])
def test_a_killed_worker_does_not_stop_the_batch(tmp_path, allowed_failures):
    """Killed mid-batch: its images go to another worker; with no retries allowed they fail alone."""
    data = tmp_path / "in"
    data.mkdir()
    for path in _tiny(tmp_path, 6, seed=9):
        shutil.copy(path, data / path.name)
    out = tmp_path / "out"
    killed: list[set[str]] = []
    with cluster_client(workers=2, allowed_failures=allowed_failures) as c:
        c.wait_for_workers(2, timeout=60)
        result = run_batch([data], out, device="cpu", client=c, progress=_kill_a_busy_worker(c, killed))
        assert killed, "no worker was busy when the first image finished"
        _no_half_files(out)
        names = sorted(p.stem for p in data.iterdir())
        complete = [n for n in names if outputs_complete(n, out)]
        if allowed_failures:
            assert not result.failed and len(result.analysed) == 6
            assert complete == names
        else:
            # Images whose worker died before writing them fail alone; one it finished and wrote just
            # before dying counts as analysed (its files are complete).
            assert result.failed and all("worker" in reason and "died" in reason for _, reason in result.failed)
            assert len(result.analysed) + len(result.failed) == 6
            failed = {Path(p).stem for p, _ in result.failed}
            assert complete == [n for n in names if n not in failed]
            rerun = run_batch([data], out, device="cpu", client=c)  # the failed ones, and only those, are redone
            assert sorted(Path(p).stem for p in rerun.analysed) == sorted(failed) and not rerun.failed
        for name in complete:  # each good image once, under its own name
            assert json.loads((out / f"{name}.json").read_text())["input"]["name"] == name
        assert sorted(f.name for f in result.images) == complete


def test_full_disk_stops_the_cluster_batch(tmp_path, client):
    from _disk_helpers import nearly_full_disk

    from MicrocalcAI.core.errors import DiskFullError

    data = tmp_path / "in"
    data.mkdir()
    for path in _tiny(tmp_path, 4, seed=13):
        shutil.copy(path, data / path.name)
    with nearly_full_disk(tmp_path / "disk") as out:
        with pytest.raises(DiskFullError, match="disk full"):
            run_batch([data], out, device="cpu", client=client)
        _no_half_files(out)


def test_every_worker_checks_the_weights_sha256(client):
    """A worker whose model is not the one the client resolved stops the batch before any image."""
    from MicrocalcAI.core.distributed import WorkerModel, _ensure_plugin
    from MicrocalcAI.core.errors import ChecksumError

    with pytest.raises(ChecksumError, match="sha256"):
        _ensure_plugin(client, WorkerModel(None, "cpu", 0.3, "0" * 64))
    assert not [
        n
        for plugins in client.run(lambda dask_worker: list(dask_worker.plugins)).values()
        for n in plugins
        if n.startswith("microcalcai-model-000000")
    ]


def test_every_worker_checks_the_model_settings(client):
    """The client's weights with another calibration or OOD reference in the worker's manifest
    would report other numbers: refused like other weights."""
    from MicrocalcAI.core.detect.manifest import resolve_model
    from MicrocalcAI.core.distributed import WorkerModel, _ensure_plugin
    from MicrocalcAI.core.errors import ChecksumError

    spec = resolve_model(None)
    with pytest.raises(ChecksumError, match="settings"):
        _ensure_plugin(client, WorkerModel(None, "cpu", 0.3, spec.sha256, settings_sha256="0" * 64))


def test_workers_build_the_analyzer_with_the_callers_input_and_lesion_settings():
    """A shared Analyzer's upsampling and cluster rule travel to the workers with the threshold."""
    from MicrocalcAI.core.distributed import _worker_model
    from MicrocalcAI.core.findings.lesions import ClusterRule

    rule = ClusterRule(min_specks=3)
    analyzer = Analyzer(device="cpu", upsampling="linear", cluster_rule=rule)
    config = _worker_model(analyzer.spec, None, "cpu", 0.2, analyzer)
    assert (config.upsampling, config.cluster_rule, config.score_threshold) == ("linear", rule, 0.2)
    default = _worker_model(analyzer.spec, None, "cpu", 0.2, Analyzer(device="cpu"))
    assert default.plugin_name != config.plugin_name  # other settings, another worker plugin


def test_workers_are_sent_where_to_find_the_clients_exact_entry(tmp_path):
    """An entry re-calibrated into another folder points at the original weights, whose own
    manifest holds the original calibration: the worker must get the new manifest, not the
    weights (which would resolve to the old entry and be refused)."""
    from dataclasses import replace

    from MicrocalcAI.core.detect.calibration import Calibration
    from MicrocalcAI.core.detect.manifest import resolve_model
    from MicrocalcAI.core.distributed import model_source

    bundled = resolve_model(None)
    assert model_source(bundled) == bundled.folder  # the bundled manifest's default entry
    plain = resolve_model("microcalcai-sim-mobilenet_v2")  # in the bundled manifest, not its default
    assert model_source(plain) == str(plain.weights_path)
    moved = replace(
        bundled,
        calibration=Calibration(temperature=2.0, fitted_on="test"),
        file=str(bundled.weights_path),
        ood=dict(bundled.ood, file=str(Path(bundled.folder) / bundled.ood["file"])),
    )
    (tmp_path / "manifest.json").write_text(json.dumps({"default": moved.name, "models": [moved.to_json()]}))
    recalibrated = resolve_model(str(tmp_path))
    assert resolve_model(str(recalibrated.weights_path)).settings_sha256 != recalibrated.settings_sha256
    assert model_source(recalibrated) == str(tmp_path)
    assert resolve_model(model_source(recalibrated)).settings_sha256 == recalibrated.settings_sha256
