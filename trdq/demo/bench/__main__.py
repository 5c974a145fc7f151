"""The worker: ``python -m trdq.demo.bench JOB OUT`` runs one JSON job in this fresh process and writes
its result as JSON to ``OUT``.

Jobs: ``{"job": "fit", "spec": ..., "bits": ..., "folder": ...}`` (:func:`~trdq.demo.bench.models.fit`;
writes ``{"status": "ok", "fitted": ...}``) and ``{"job": "measure", "spec": ..., "backend": ...,
"fitted": ... or null}`` (:func:`~trdq.demo.bench.measure.measure`; writes the backend's record). A
failure is written as an ``error`` record; the exit code is 0 only for success.
"""

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from trdq.demo.bench.measure import limit_memory, measure, mib
from trdq.demo.bench.models import Fitted, fit
from trdq.demo.bench.runner import failed
from trdq.demo.bench.spec import Backend, BenchSpec
from trdq.interrupts import terminate_as_interrupt

log = logging.getLogger("trdq.demo.bench")


def _run(job: dict, spec: BenchSpec) -> dict:
    if job["job"] == "fit":
        return {"status": "ok", "fitted": asdict(fit(spec, job["bits"], job["folder"]))}
    return measure(spec, Backend(**job["backend"]), job["fitted"] and Fitted(**job["fitted"]))


def main(payload: str, out: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    job = json.loads(payload)
    spec = BenchSpec(**job["spec"])
    # no address-space cap on cuda: CUDA reserves far more virtual memory than any cap would allow
    budget = None if spec.device == "cuda" else limit_memory(spec.mem_limit_gib)
    try:
        with terminate_as_interrupt():  # the runner stops a worker with SIGTERM: clean up as on Ctrl-C
            result = _run(job, spec)
    except KeyboardInterrupt:
        return 130  # stopped: nothing to report
    except Exception as err:  # at the process boundary every failure is a record (allocator: RuntimeError)
        what = job["backend"]["name"] if job["job"] == "measure" else f"fitting {job['bits']}"
        log.error("%s: %s", what, err)
        why = f"{type(err).__name__}: {err}"
        result = failed(Backend(**job["backend"]), why) if job["job"] == "measure" else {"status": "error",
                                                                                      "error": why}
    result["mem_limit_mib"] = mib(budget)
    Path(out).write_text(json.dumps(result))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
