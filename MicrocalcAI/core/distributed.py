"""Batch inference on a Dask cluster: the same per-image work as the local batch, as futures.

Imported only when a batch is given a Dask client (``run_batch(..., client=...)``,
``microcalcai detect --workers N`` or ``--scheduler ADDRESS``), so ``import MicrocalcAI`` and
Slicer never import dask.

- Each image is one task running :func:`MicrocalcAI.core.batch.analyse_to_files`, the very
  function the in-process batch calls, so the per-image files are the same; the client writes
  the batch tables once, after the images.
- Each worker loads the model once, in a worker plugin (:class:`AnalyzerPlugin`) that also
  checks that the weights it loaded have the sha256 the client resolved: a worker with other
  weights fails the batch before any image is analysed. Workers that join later (a restarted
  worker, an autoscaled job) run the same plugin.
- A worker that dies while analysing an image (killed, out of memory) has the image retried
  on another worker; after ``distributed.scheduler.allowed-failures`` deaths the scheduler
  gives up with ``KilledWorker`` and the image is reported as failed; the batch goes on.
- Task keys carry a hash of the input path, never the path: keys appear on the dashboard and
  in the scheduler's logs, and file names can hold patient names or IDs.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, cast

import dask
from distributed import Client, KilledWorker, LocalCluster, WorkerPlugin, as_completed, get_worker

from MicrocalcAI.core.batch import ImageOutcome, _still_valid, analyse_to_files
from MicrocalcAI.core.detect.manifest import ModelSpec, resolve_model
from MicrocalcAI.core.errors import ChecksumError, DiskFullError, MicrocalcAIError, ModelError
from MicrocalcAI.core.findings.lesions import ClusterRule
from MicrocalcAI.core.findings.specks import SpeckConfig
from MicrocalcAI.core.progress import ProgressCallback, no_progress

if TYPE_CHECKING:
    from MicrocalcAI.core.pipeline import Analyzer

__all__ = [
    "DEFAULT_ALLOWED_FAILURES",
    "AnalyzerPlugin",
    "WorkerModel",
    "analyse_on_cluster",
    "cluster_client",
    "dashboard_link",
    "image_key",
]

log = logging.getLogger(__name__)

#: How many times an image may be on a worker that dies before it is reported as failed.
DEFAULT_ALLOWED_FAILURES = 2


@dataclass(frozen=True)
class WorkerModel:
    """What a worker needs to build the client's :class:`Analyzer`, and the sha256 it must find."""

    model: Optional[str]  # model name, manifest or weights path (workers must see the same path)
    device: Optional[str]
    score_threshold: float
    sha256: str
    batch_size: int = 4
    speck_config: Optional[SpeckConfig] = None
    upsampling: Optional[str] = None  # Analyzer.upsampling
    cluster_rule: Optional[ClusterRule] = None  # Analyzer.cluster_rule
    #: ModelSpec.settings_sha256 the worker's manifest entry must have (calibration, OOD
    #: reference, thresholds): the same weights re-calibrated would report other numbers.
    settings_sha256: Optional[str] = None

    @property
    def plugin_name(self) -> str:
        digest = hashlib.sha256(repr(self).encode()).hexdigest()[:12]
        return f"microcalcai-model-{self.sha256[:12]}-{digest}"


class AnalyzerPlugin(WorkerPlugin):
    """Loads and checks the model once per worker process; tasks borrow it."""

    def __init__(self, config: WorkerModel) -> None:
        self.config = config
        self.name = config.plugin_name
        self.analyzer: Optional[Analyzer] = None

    def setup(self, worker) -> None:  # noqa: ANN001 - distributed.Worker
        from MicrocalcAI.core.pipeline import Analyzer

        c = self.config
        analyzer = Analyzer(
            c.model,
            c.device,
            score_threshold=c.score_threshold,
            batch_size=c.batch_size,
            speck_config=c.speck_config,
            upsampling=c.upsampling,
            cluster_rule=c.cluster_rule,
        )  # verifies the weights file against its manifest's sha256
        if analyzer.spec.sha256 != c.sha256:
            raise ChecksumError(
                f"worker {worker.address} resolved model {c.model or 'default'} to weights with sha256 "
                f"{analyzer.spec.sha256}, not the client's {c.sha256}: install the same model on every worker"
            )
        if c.settings_sha256 is not None and analyzer.spec.settings_sha256 != c.settings_sha256:
            raise ChecksumError(
                f"worker {worker.address} resolved {c.model} to model {analyzer.spec.name} {analyzer.spec.version} "
                "with the client's weights but other calibration, OOD reference or settings (settings_sha256 "
                f"{analyzer.spec.settings_sha256[:12]}..., client {c.settings_sha256[:12]}...): install the same "
                "manifest on every worker, or make the client's entry the default of its manifest"
            )
        self.analyzer = analyzer

    def teardown(self, worker) -> None:  # noqa: ANN001
        self.analyzer = None


def _analyse_image_task(plugin_name: str, path: str, name: str, out: str, spacing_mm: Optional[float]) -> ImageOutcome:
    """One image on a worker, with the worker's loaded model.

    A full disk comes back as an outcome, not an exception, so Dask neither retries it nor
    logs the task's arguments (the file name) in the worker's log.
    """
    plugin = cast(AnalyzerPlugin, get_worker().plugins[plugin_name])
    if plugin.analyzer is None:  # setup() failed on this worker; Dask retries elsewhere
        raise RuntimeError(f"model plugin {plugin_name} is not set up on this worker")
    try:
        return analyse_to_files(plugin.analyzer, Path(path), name, Path(out), spacing_mm=spacing_mm)
    except DiskFullError as exc:
        return ImageOutcome(Path(path), name, error=str(exc), disk_full=True)


def image_key(batch: str, path: Path) -> str:
    """A task key that identifies the image without naming it (file names can hold patient data)."""
    return f"microcalcai-image-{batch}-{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"


def _worker_model(
    spec: ModelSpec,
    model: Optional[str],
    device: Optional[str],
    score_threshold: float,
    analyzer: Optional[Analyzer],
) -> WorkerModel:
    if analyzer is None:
        return WorkerModel(model, device, score_threshold, spec.sha256, settings_sha256=spec.settings_sha256)
    return WorkerModel(
        model_source(analyzer.spec),
        str(analyzer.device),
        score_threshold,  # this batch's threshold, which may differ from the analyzer's default
        analyzer.spec.sha256,
        analyzer.batch_size,
        analyzer.speck_config,
        analyzer.upsampling,
        analyzer.cluster_rule,
        analyzer.spec.settings_sha256,
    )


def model_source(spec: ModelSpec) -> str:
    """What a worker passes to ``Analyzer(model=...)`` to load exactly ``spec``.

    The entry's manifest folder when the entry is that manifest's default (an entry written by
    ``export --recalibrate --out`` points at weights in another folder, whose own manifest
    holds the original calibration); otherwise the weights file, which finds the first entry
    listing it, and the worker's settings check refuses it if that is another entry.
    """
    if spec.folder:
        try:
            if resolve_model(spec.folder).settings_sha256 == spec.settings_sha256:
                return str(spec.folder)
        except MicrocalcAIError:
            pass
    return str(spec.weights_path)


def _ensure_plugin(client: Client, config: WorkerModel) -> str:
    """Register the model plugin unless every worker already has it (a second batch, same model)."""
    name = config.plugin_name
    have = client.run(lambda dask_worker: name in dask_worker.plugins)
    if not have or not all(have.values()):
        try:
            client.register_plugin(AnalyzerPlugin(config), name=name)
        except Exception as exc:
            try:  # the scheduler would hand the failing plugin to every worker that joins later
                client.unregister_worker_plugin(name)
            except Exception:  # noqa: S110 - nothing registered: nothing to undo
                pass
            if isinstance(exc, MicrocalcAIError):
                raise
            raise ModelError(f"a Dask worker could not load the model: {type(exc).__name__}: {exc}") from exc
    return name


def analyse_on_cluster(
    client: Client,
    todo: Sequence[tuple[Path, str]],
    out: Path,
    *,
    spec: ModelSpec,
    model: Optional[str],
    device: Optional[str],
    score_threshold: float,
    analyzer: Optional[Analyzer] = None,
    spacing_mm: Optional[float] = None,
    progress: Optional[ProgressCallback] = None,
) -> Iterator[tuple[int, ImageOutcome]]:
    """Analyse ``todo`` ((path, output name) pairs) as Dask futures, yielding as they complete.

    Yields (index in ``todo``, outcome). Raises :class:`DiskFullError` at the first full
    disk, after cancelling the images still queued; an unexpected error on a worker (a bug)
    is raised too, as in the local path.
    """
    progress = progress or no_progress
    if not todo:
        return
    progress(0.0, "loading the model on the workers")
    plugin = _ensure_plugin(client, _worker_model(spec, model, device, score_threshold, analyzer))
    batch = uuid.uuid4().hex[:8]
    started = time.time()
    futures = [
        client.submit(
            _analyse_image_task, plugin, str(path), name, str(out), spacing_mm, key=image_key(batch, path), pure=False
        )
        for path, name in todo
    ]
    index = {future.key: i for i, future in enumerate(futures)}
    log.info("%d image(s) submitted to the Dask cluster", len(futures))
    finished = 0
    try:
        for future in as_completed(futures):
            i = index[future.key]
            path, name = todo[i]
            finished += 1
            if future.status == "error":
                exc = future.exception()
                if not isinstance(exc, KilledWorker):
                    raise exc
                outcome = _written_before_death(path, name, out, spec, score_threshold, spacing_mm, started)
                if outcome is None:
                    reason = "the Dask worker analysing it died (killed or out of memory) more often than allowed"
                    outcome = ImageOutcome(path, name, error=f"{path.name}: {reason}; skipped")
            else:
                outcome = future.result()
                if outcome.disk_full:
                    raise DiskFullError(outcome.error)
            progress(finished / len(todo), f"[{finished}/{len(todo)}] {path.name}: done")
            yield i, outcome
    finally:
        client.cancel([f for f in futures if not f.done()])


def _written_before_death(
    path: Path,
    name: str,
    out: Path,
    spec: ModelSpec,
    score_threshold: float,
    spacing_mm: Optional[float],
    started: float,
) -> Optional[ImageOutcome]:
    """The image's outcome when its worker wrote complete outputs in this batch and then died.

    A worker can finish an image and die before the scheduler hears of it; the files are
    complete (atomic writes), so the image counts as analysed rather than failed.
    """
    from MicrocalcAI.core.outputs.complete import outputs_complete
    from MicrocalcAI.core.outputs.findings_json import load_image_json

    json_path = out / f"{name}.json"
    try:
        if not outputs_complete(name, out) or json_path.stat().st_mtime < started - 1.0:
            return None
        findings = load_image_json(json_path)
    except (OSError, MicrocalcAIError):
        return None
    if not _still_valid(findings, path, spec, score_threshold, spacing_mm):
        return None
    return ImageOutcome(path, name, findings, out / f"{name}_overlay.png")


@contextmanager
def cluster_client(
    *,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    allowed_failures: int = DEFAULT_ALLOWED_FAILURES,
    dashboard: bool = True,
) -> Iterator[Client]:
    """A Dask client: on a new LocalCluster of ``workers`` processes, or on ``scheduler``.

    The LocalCluster listens on 127.0.0.1 only (scheduler, workers and dashboard), one thread
    per worker (torch parallelises inside an image; more threads would only compete), and
    gives up on an image after ``allowed_failures`` worker deaths. A remote scheduler uses
    its own configuration for that and for TLS (Dask's ``distributed.comm.tls`` settings,
    picked up from the Dask configuration by ``Client``).
    """
    if scheduler is not None:
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    with dask.config.set({"distributed.scheduler.allowed-failures": int(allowed_failures)}):
        cluster = LocalCluster(
            n_workers=int(workers or 1),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0" if dashboard else None,
            silence_logs=logging.ERROR,  # worker deaths are reported per image, not as log noise
        )
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def dashboard_link(client: Client) -> Optional[str]:
    """The dashboard's address when the scheduler serves one (it needs ``bokeh``)."""
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # pragma: no cover - an unreachable scheduler is reported elsewhere
        return None
    return client.dashboard_link if "dashboard" in services else None
