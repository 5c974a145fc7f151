"""A benchmark run: one preparation worker per quantized configuration fits it once, then one
timing worker per backend builds and measures its model; each worker is a fresh process."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from trdq.demo.bench.measure import measure
from trdq.demo.bench.models import Fitted, fit, fit_key
from trdq.demo.bench.report import make_report
from trdq.demo.bench.spec import MIB, Backend, BenchSpec

log = logging.getLogger(__name__)

DEFAULT_CACHE_ROOT = Path("runs/bench-cache")
FIT_RECORD = "bench-fit.json"  # written last: a fit folder without it is incomplete


class FitError(RuntimeError):
    """A preparation worker failed; the backends of its configuration report why."""


def _worker_env(threads: int) -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[3])
    return {
        **os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        # glibc malloc returns blocks above its mmap threshold to the kernel on free, and trims the
        # heap top after frees, so every step would fault its large activations in again: noise
        # in the timings. Keep blocks up to 32 MiB (the largest threshold glibc accepts) on the
        # heap, never trim by itself (measure() trims once, before timing), and use two arenas
        # (plenty for a few threads; fewer arenas fragment RSS less).
        "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(32 * MIB),
        "MALLOC_TRIM_THRESHOLD_": str(2**40),
    }


def in_worker(job: dict, threads: int) -> dict:
    """Run ``job`` (see :mod:`trdq.demo.bench.__main__`) in a fresh process; what it wrote, or an
    ``error`` record when it wrote nothing."""
    with tempfile.TemporaryDirectory(prefix="trdq-bench-") as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.Popen([sys.executable, "-m", "trdq.demo.bench", json.dumps(job), str(out)],
                                env=_worker_env(threads))
        try:
            proc.wait()
        except BaseException:  # interrupted (Ctrl-C, or SIGTERM turned into KeyboardInterrupt): no orphan
            stop_worker(proc)
            raise
        if out.exists():
            return json.loads(out.read_text())
    why = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
    return {"status": "error",
            "error": f"worker exited with code {proc.returncode}{why} before writing a result"}


def stop_worker(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Terminate a worker, and kill it if it has not exited after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def failed(backend: Backend, why: str) -> dict:
    """The record of a backend that could not be measured."""
    return {**asdict(backend), "backend": backend.name, "status": "error", "error": why, "fit_seconds": None}


def prepare(spec: BenchSpec, bits: str, cache: str | Path, isolate: bool = True) -> Fitted:
    """The fit of ``bits`` under ``spec`` in folder ``cache``: the one there under its
    :func:`~trdq.demo.bench.models.fit_key`, else a new one (made in a fresh worker if ``isolate``).

    Raises:
        FitError: if the preparation worker fails, or something else is in the entry's place.
    """
    entry = Path(cache) / fit_key(spec, bits)
    if (entry / FIT_RECORD).exists():
        record = json.loads((entry / FIT_RECORD).read_text())
        return Fitted(**{**record, "folder": str(entry), "reused": True})
    partial = entry.parent / f".{entry.name}.{os.getpid()}.partial"  # renamed when complete
    try:
        if isolate:
            out = in_worker({"job": "fit", "spec": asdict(spec), "bits": bits, "folder": str(partial)},
                            spec.num_threads)
            if out["status"] != "ok":
                raise FitError(f"fitting {bits} failed: {out['error']}")
            fitted = Fitted(**out["fitted"])
        else:
            fitted = fit(spec, bits, partial)
        (partial / FIT_RECORD).write_text(json.dumps(asdict(fitted)))
        with contextlib.suppress(OSError):  # another run completed the entry meanwhile: the same fit
            partial.rename(entry)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if not (entry / FIT_RECORD).exists():
        raise FitError(f"{entry} is in the way of the {bits} fit and holds no {FIT_RECORD}; delete it")
    return dataclasses.replace(fitted, folder=str(entry))


@contextlib.contextmanager
def _cache_folder(cache: str | Path | None, keep: bool) -> Iterator[Path]:
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        yield Path(cache)
        return
    DEFAULT_CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=DEFAULT_CACHE_ROOT))
    try:
        yield folder
    finally:
        if keep:
            log.info("kept the fits in %s", folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            for parent in (DEFAULT_CACHE_ROOT, DEFAULT_CACHE_ROOT.parent):
                with contextlib.suppress(OSError):  # only when empty: no other run or output there
                    parent.rmdir()


def _fit_all(spec: BenchSpec, backends: Sequence[Backend], cache: Path,
             isolate: bool) -> dict[str, Fitted | FitError]:
    """One fit per distinct bits among ``backends`` that load one (the rest of the config is the spec's)."""
    fits: dict[str, Fitted | FitError] = {}
    for bits in dict.fromkeys(b.bits for b in backends if b.needs_fit):
        names = [b.name for b in backends if b.needs_fit and b.bits == bits]
        try:
            fits[bits] = fitted = prepare(spec, bits, cache, isolate)
            log.info("%s for %s: %s in %.1f s", bits, ", ".join(names),
                     "reused the fit made" if fitted.reused else "fitted once", fitted.fit_seconds)
        except FitError as err:
            log.error("%s", err)
            fits[bits] = err
    return fits


def _measure(spec: BenchSpec, backend: Backend, fitted: Fitted | FitError | None, isolate: bool) -> dict:
    if isinstance(fitted, FitError):
        return failed(backend, str(fitted))
    if not isolate:
        return measure(spec, backend, fitted)
    out = in_worker({"job": "measure", "spec": asdict(spec), "backend": asdict(backend),
                     "fitted": fitted and asdict(fitted)}, spec.num_threads)
    return out if "backend" in out else failed(backend, out["error"])


def run(spec: BenchSpec, backends: Sequence[Backend], isolate: bool = True,
        progress: Callable[[int, int, dict], None] | None = None, cache: str | Path | None = None,
        keep_cache: bool = False) -> dict:
    """Fit each quantized configuration once, then measure every backend, each step in a fresh
    worker process unless ``isolate`` is False (then in this process, and the memory figures
    are this process's, not the backend's).

    A backend whose worker (or fit) fails becomes an ``error`` record that says why; the others still run.

    Args:
        progress: called with (backends done, total, the last result).
        cache: a folder to keep fits in and reuse across runs, each under a hash of everything
            that shapes it (so a stale fit is never reused); None: a temporary folder under
            ``runs/bench-cache/``, removed at the end unless ``keep_cache``.

    Returns:
        The report: setup, rules, machine, calibration, fitting, and one result per backend with ratios.
    """
    results = []
    with _cache_folder(cache, keep_cache) as folder:
        fits = _fit_all(spec, backends, folder, isolate)
        for i, backend in enumerate(backends):
            fitted = fits.get(backend.bits) if backend.needs_fit else None
            results.append(_measure(spec, backend, fitted, isolate))
            if progress is not None:
                progress(i + 1, len(backends), results[-1])
    fitting = {"cache": str(folder) if cache is not None or keep_cache else None, "fits": [
        {"bits": bits, "backends": [b.name for b in backends if b.needs_fit and b.bits == bits],
         **({"status": "error", "error": str(f)} if isinstance(f, FitError) else
            {"status": "ok", "key": Path(f.folder).name, "fit_seconds": f.fit_seconds, "reused": f.reused})}
        for bits, f in fits.items()]}
    return make_report(spec, results, isolate, fitting)
