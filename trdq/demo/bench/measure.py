"""Measuring one backend in this process: step and end-to-end latency, weight bytes, resident memory
(and on a CUDA device, the allocator's memory)."""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from trdq.demo.bench.models import Fitted, build, mid_timestep, step_inputs
from trdq.demo.bench.spec import CALIB_PROMPTS, FULL_PRECISION, MIB, REAL, Backend, BenchSpec

log = logging.getLogger(__name__)

WEIGHT_RULE = ("bytes of every distinct tensor storage the transformer holds after the timed steps: "
               "parameters, buffers (persistent or not) and tensors kept in module attributes (per-group "
               "transforms, cached rotation matrices); a simulated layer's float weights_fq copies count, "
               "which is why the simulated path saves no memory; fbgemm's packed int8 weight copies (the "
               "int8 GEMM of CPUs without VNNI) count as fbgemm_packed")
DEPTH_RULE = ("weight_bytes_at_depth: a random model run with fewer blocks than its published depth (--layers), "
              "extrapolated to that depth: this run's weight bytes plus (published - run blocks) x the bytes "
              "the last block adds beyond every storage the rest of the model holds. Exact for weights: every "
              "block has the same layers and shapes, and a factor shared by all blocks of one width (a greedy "
              "rotation's signs, a Hadamard's Kronecker factors) counts once (a run of one block cannot tell "
              "those from the block's own and counts them in every block: run 2 or more). Latencies are not "
              "extrapolated")
MEMORY_RULE = ("resident set size of the backend's own worker process, from /proc/self/status: "
               "rss_baseline after imports; rss_model once built (FP sources freed, malloc trimmed); "
               "peak_rss = VmHWM over warm-up and timing (the high-water mark, reset once the model is "
               "built); peak_rss_build = VmHWM while building (FP model, loading the fitted quantized "
               "model, conversion; calibration ran in the preparation worker, see `fitting`); "
               "mem_limit = the worker's address-space cap beyond its size after imports (none on cuda: "
               "CUDA reserves far more virtual memory than it uses). On cuda also torch's CUDA allocator, "
               "on the current device: cuda_model = memory_allocated once built (RSS baseline taken after "
               "the CUDA context was created); peak_cuda = max_memory_allocated over warm-up and timing "
               "(reset with the RSS mark); peak_cuda_build = max_memory_allocated while building (the model "
               "is built on the CPU and moved); reserved-but-unallocated cache is not counted")


def _tensors(value, depth: int = 0):
    """Tensors inside ``value``, through lists, tuples, dicts and dataclasses (not modules); a
    wrapper tensor subclass (torchao's and optimum-quanto's quantized weights) as its inner tensors."""
    if torch.is_tensor(value) and hasattr(value, "__tensor_flatten__"):
        for name in value.__tensor_flatten__()[0]:
            yield from _tensors(getattr(value, name), depth + 1)
    elif torch.is_tensor(value):
        yield value
    elif depth > 6:
        return
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v, depth + 1)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name), depth + 1)


def _storages(modules, seen: set[int]) -> dict[str, int]:
    """Bytes per dtype of the storages ``modules`` hold that are not in ``seen`` (which gains them)."""
    out: dict[str, int] = {}
    for m in modules:
        held = [*m._parameters.values(), *m._buffers.values(),
                *(v for k, v in vars(m).items() if not k.startswith("_"))]
        for t in _tensors(held):
            storage = t.untyped_storage()
            if storage.nbytes() and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                name = str(t.dtype).removeprefix("torch.")
                out[name] = out.get(name, 0) + storage.nbytes()
        if packed := getattr(m, "prepared_bytes", lambda: 0)():  # fbgemm's own int8 copies (not tensors)
            out["fbgemm_packed"] = out.get("fbgemm_packed", 0) + packed
    return out


def weight_bytes(module: nn.Module) -> dict[str, int]:
    """Bytes per dtype of every distinct storage ``module`` holds (see :data:`WEIGHT_RULE`).

    Returns:
        ``{dtype name: bytes}`` plus ``"total"``.
    """
    out = _storages(module.modules(), set())
    return {**dict(sorted(out.items())), "total": sum(out.values())}


def weight_bytes_at_depth(module: nn.Module, depth: int) -> dict | None:
    """The weight bytes ``module`` would hold with ``depth`` blocks in each of its block lists
    (the ``nn.ModuleList`` children named ``*blocks``; see :data:`DEPTH_RULE`), or None without
    block lists.

    Returns:
        ``{"blocks": run's blocks, "depth": depth, "per_block": bytes the last block adds,
        "total": extrapolated bytes}``.
    """
    lists = [m for name, m in module.named_children() if isinstance(m, nn.ModuleList) and name.endswith("blocks")
             and len(m)]
    if not lists:
        return None
    last = {id(m) for blocks in lists for m in blocks[-1].modules()}
    seen: set[int] = set()
    _storages((m for m in module.modules() if id(m) not in last), seen)  # everything but the last blocks
    per_block = sum(_storages((m for blocks in lists for m in blocks[-1].modules()), seen).values())
    run = len(lists[0])
    return {"blocks": run, "depth": depth, "per_block": per_block,
            "total": weight_bytes(module)["total"] + (depth - run) * per_block}


def proc_bytes(path: str, key: str) -> int | None:
    """A size in bytes from a ``/proc`` table such as ``/proc/self/status`` (None where there is none)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _trim() -> None:
    """Free garbage and hand free heap pages back, so RSS shows what the model holds."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux 4.0+)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def limit_memory(gib: float | None) -> int | None:
    """Cap this process's address space at its size now plus ``gib`` GiB (None: 90% of the memory
    available now); returns the bytes allowed beyond that size, None without a cap."""
    if gib == 0:
        return None
    available = proc_bytes("/proc/meminfo", "MemAvailable") or 0
    budget = int(gib * 2**30) if gib is not None else int(0.9 * available)
    if budget <= 0:
        return None
    limit = (proc_bytes("/proc/self/status", "VmSize") or 0) + budget
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return budget


def synchronizer(device: str) -> Callable[[], None]:
    """What waits for ``device`` to finish its queued work: ``torch.cuda.synchronize`` on cuda
    (kernels run asynchronously; without it a clock times the launches), nothing on cpu."""
    return torch.cuda.synchronize if device == "cuda" else lambda: None


def timed(fn: Callable[[], object], warmup: int, repeats: int, scale: float = 1.0,
          sync: Callable[[], None] | None = None) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; times x ``scale``.

    ``sync`` (:func:`synchronizer`) runs before the clock starts and before it stops, so that each
    time is one call's work on the device and none of the previous call's.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * scale)
    return {"median": statistics.median(times), "min": min(times), "all": times}


# what a step's profile is split into: profiler event name -> category. Eager code calls the
# wrappers (linear, scaled_dot_product_attention); code compiled as a whole calls the kernels
# beneath them (addmm, the fused attention), which count only outside a counted event.
ATTENTION_OPS = ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
                 "aten::_scaled_dot_product_cudnn_attention")
PROFILE_OPS = {**dict.fromkeys(ATTENTION_OPS, "attention"), "aten::linear": "float_gemm",
               "aten::addmm": "float_gemm", "aten::mm": "float_gemm", "aten::_int_mm": "int8_gemm"}


def profile_step(transformer: nn.Module, inputs: dict, device: str = "cpu") -> dict:
    """One profiled step, split into attention (``scaled_dot_product_attention`` or its fused
    kernels), float GEMMs (``nn.Linear``/``F.linear``, ``mm``/``addmm``; simulated layers
    included), int8 GEMMs (``torch._int_mm``) and the real path's online transforms (profiler
    label :data:`trdq.layers.ONLINE_TRANSFORM`), each in ms and as a share of the step's wall
    time; ``other`` is the rest. An op inside another counted one is not counted again.

    On cpu the times are CPU time. On cuda they are the device time of the kernels launched
    under each op (the CPU time there would be launch overhead only), against the step's wall
    time with the device synchronized at both ends; ``device_busy_ms`` is the device time of all
    the step's kernels. ``basis`` says which.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    from trdq.kernels import INT8_GEMM
    from trdq.layers import ONLINE_TRANSFORM

    cuda, sync = device == "cuda", synchronizer(device)
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with torch.profiler.profile(activities=activities) as prof:
        sync()
        start = time.perf_counter()
        transformer(**inputs)
        sync()
        step_ms = (time.perf_counter() - start) * 1e3
    names = {**PROFILE_OPS, ONLINE_TRANSFORM: "online_transform", INT8_GEMM: "int8_gemm"}
    ms = dict.fromkeys(names.values(), 0.0)
    out: dict = {}
    # host-side events; on cuda each one's device_time_total sums the kernels launched inside it
    host = [e for e in prof.events() if e.device_type == DeviceType.CPU]
    for e in host:
        if e.name in names and not _inside(e, names):
            ms[names[e.name]] += (e.device_time_total if cuda else e.cpu_time_total) / 1e3
    if not cuda:
        out["basis"] = "cpu time under each op or label / wall time of the step"
    else:
        busy_ms = sum(k.duration for e in host for k in e.kernels) / 1e3
        out.update(basis="cuda kernel time under each op or label / synchronized wall time of the step",
                   device_busy_ms=round(busy_ms, 3))
    ms["other"] = max(step_ms - sum(ms.values()), 0.0)
    out.update({f"{k}_ms": round(v, 3) for k, v in ms.items()}, profiled_step_ms=round(step_ms, 2),
               shares={k: round(v / step_ms, 4) for k, v in ms.items()})
    return out


def _inside(event, names: dict) -> bool:
    """Whether a profiler event runs inside one named in ``names``."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in names:
            return True
        parent = parent.cpu_parent
    return False


def online_transform_share(profile: dict) -> dict:
    """The online transforms' part of a :func:`profile_step` record (real backends)."""
    out = {"basis": profile["basis"], "transform_ms": profile["online_transform_ms"],
           "profiled_step_ms": profile["profiled_step_ms"], "share": profile["shares"]["online_transform"]}
    if "device_busy_ms" in profile:
        busy = profile["device_busy_ms"]
        out.update(device_busy_ms=busy,
                   share_of_device_busy=round(profile["online_transform_ms"] / busy, 4) if busy else None)
    return out


def mib(n: int | None) -> float | None:
    return None if n is None else round(n / MIB, 1)


def shared_step(spec: BenchSpec, built, inputs: dict) -> dict:
    """The step timed again with Attention-Sharing in the layers ``spec.share_attention`` picks by
    cond/uncond similarity: over the world's prompts for a shapes-world pipeline, else on this
    step's own inputs (random weights and inputs: the choice is arbitrary, the cost is not)."""
    from trdq.attention import (
        ShareRule,
        measure_similarity,
        select_layers,
        share_attention,
        similarity_of_call,
    )
    from trdq.demo.worlds import WORLDS

    world = None if spec.bare else WORLDS.get(built.model.settings.world)
    if world is not None:
        prompts = [s.caption for s in world.sample_scenes(CALIB_PROMPTS, seed=7919)]
        similarity, chosen_by = measure_similarity(built.model, prompts, steps=4), "similarity on prompts"
    else:
        similarity, chosen_by = similarity_of_call(built.transformer, **inputs), "similarity on the step inputs"
    rule = ShareRule.parse(str(spec.share_attention))
    if rule.budget is not None:
        rule = ShareRule(budget=min(rule.budget, len(similarity.layers)))
    plan = select_layers(similarity, rule=rule)
    with share_attention(built.transformer, plan):
        step = timed(lambda: built.transformer(**inputs), spec.warmup, spec.num_repeats, scale=1e3,
                     sync=synchronizer(spec.device))
    return {"rule": rule.label, "layers": list(plan.layers), "of": len(similarity.layers),
            "attn_score_skipped": plan.skipped,
            "chosen_by": chosen_by, "step_ms": step}


class CudaMemory:
    """torch's CUDA allocator figures of this process on the current device, or None on cpu
    (see :data:`MEMORY_RULE`)."""

    def __init__(self, device: str):
        self.on = device == "cuda"
        if self.on:
            torch.ones(1, device=device)  # the context: part of the baseline, not of the model
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def allocated(self) -> int | None:
        return torch.cuda.memory_allocated() if self.on else None

    def peak(self, reset: bool = False) -> int | None:
        """The high-water mark since the last reset; then reset it if ``reset``."""
        if not self.on:
            return None
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return peak


def _timings(spec: BenchSpec, built, inputs: dict, execution: str) -> dict:
    """Step (and image) latency, the online transforms' share and the shared step of ``built``."""
    from trdq.sampling import generate

    prompt = "a small red circle on the left"  # in the shapes grammar; any pipeline takes it
    sync = synchronizer(spec.device)
    with torch.inference_mode():
        step = timed(lambda: built.transformer(**inputs), spec.warmup, spec.num_repeats, scale=1e3, sync=sync)
        e2e = None if spec.bare else timed(lambda: generate(built.model, [prompt], [spec.seed], batch_size=1),
                                           1, spec.e2e_repeats, sync=sync)
        profile = profile_step(built.transformer, inputs, spec.device)
        online = online_transform_share(profile) if execution == REAL and not built.library else None
        sharing = None if spec.share_attention is None else shared_step(spec, built, inputs)
    return {"step_ms": step, "e2e_s_per_image": e2e, "profile": profile, "online_transforms": online,
            "sharing": sharing}


def int8_gemms(transformer: nn.Module) -> str | None:
    """The int8 GEMM(s) trdq's real layers of ``transformer`` run (``trdq.kernels.GEMMS``, e.g.
    ``"fbgemm+fp32"`` where the CFG branches differ in bits), or None without such layers."""
    from trdq.layers import IntLinear

    names = sorted({m.gemm for m in transformer.modules() if isinstance(m, IntLinear)})
    return "+".join(names) or None


def compact_rotations(transformer: nn.Module) -> bool | None:
    """Whether trdq's real layers of ``transformer`` keep their block rotations as reflections
    (None without such layers)."""
    from trdq.layers import IntLinear

    kinds = {m.compact_rotations for m in transformer.modules() if isinstance(m, IntLinear)}
    return kinds.pop() if len(kinds) == 1 else None


def measure(spec: BenchSpec, backend: Backend, fitted: Fitted | None = None) -> dict:
    """Build ``backend``'s model in this process (a quantized one from ``fitted``), move it to
    ``spec.device`` and measure it (see :mod:`trdq.demo.bench`).

    Returns:
        The backend's result record, with ``setup`` (latent, tokens, timestep) for the report.

    Raises:
        ValueError: if the model's execution label is not the backend's.
    """
    from trdq.api import quant_info

    torch.set_num_threads(spec.num_threads)
    gpu = CudaMemory(spec.device)
    _trim()
    baseline, start = proc_bytes("/proc/self/status", "VmRSS"), time.perf_counter()
    built = build(spec, backend, fitted)
    synchronizer(spec.device)()
    build_s = time.perf_counter() - start
    info = quant_info(built.model)
    # a peer library's model carries no trdq label: its execution is what the library runs
    execution = backend.execution if backend.library else FULL_PRECISION if info is None else info.execution
    if execution != backend.execution:
        raise ValueError(f"{backend.name} should run {backend.execution!r}, its model reports {execution!r}")
    _trim()
    peak_build, rss_model = proc_bytes("/proc/self/status", "VmHWM"), proc_bytes("/proc/self/status", "VmRSS")
    cuda_model, peak_cuda_build = gpu.allocated(), gpu.peak(reset=True)
    reset = reset_peak()
    timestep = mid_timestep(built)
    inputs = step_inputs(built.transformer, built.latent, built.text_tokens, spec.batch, timestep, spec.seed,
                         spec.device)
    log.info("%s (%s) on %s: built in %.1f s; %s", backend.name, execution, spec.device, build_s,
             f"{spec.warmup} warm-up + {spec.num_repeats} timed steps" if spec.timing else "not timed")
    timings = (_timings(spec, built, inputs, execution) if spec.timing else
               {"step_ms": None, "e2e_s_per_image": None, "profile": None, "online_transforms": None, "sharing": None})
    latent = inputs["hidden_states"]  # (B, C, H, W) or (B, C, F, H, W)
    depth = spec.published_depth
    return {
        "backend": backend.name, "execution": execution, "bits": backend.bits, "device": spec.device,
        "dtype": spec.real_dtype if execution == REAL else backend.dtype, "compiled": built.compiled,
        "compile_s": built.compile_s, "library": built.library, "quantized_layers": built.quantized_layers,
        "note": built.note, "deployment": backend.deployment, "gemm": int8_gemms(built.transformer),
        "attention_bits": backend.attention_bits,
        "compact_rotations": compact_rotations(built.transformer),
        "status": "ok", **timings,
        "weight_bytes": weight_bytes(built.transformer), "build_s": round(build_s, 2),
        "weight_bytes_at_depth": None if depth is None else weight_bytes_at_depth(built.transformer, depth),
        "fit_seconds": None if fitted is None else fitted.fit_seconds,
        "rss_baseline_mib": mib(baseline), "rss_model_mib": mib(rss_model),
        "peak_rss_mib": mib(proc_bytes("/proc/self/status", "VmHWM")) if reset else None,
        "peak_rss_build_mib": mib(peak_build),
        "cuda_model_mib": mib(cuda_model), "peak_cuda_mib": mib(gpu.peak()),
        "peak_cuda_build_mib": mib(peak_cuda_build),
        "setup": {"transformer": type(built.transformer).__name__, "resolution_px": built.resolution,
                  "latent": list(latent.shape), "text_tokens": built.text_tokens, "timestep": timestep,
                  "image_tokens": latent[0, 0].numel() // built.transformer.config.patch_size ** 2,
                  "sampler_steps": len(built.timesteps)},
    }
