"""Single-layer timing at PixArt-XL shapes: ``python -m trdq.demo.bench.layer_timing --json OUT``.

For each of PixArt-XL's linear shapes (1152 -> 1152, 1152 -> 4608, 4608 -> 1152) on ``--rows``
tokens (2048: the 512 px CFG batch), times the fp16 ``nn.Linear`` against the real W8A8
:class:`~trdq.layers.IntLinear` (a DuQuant transform with smoothing, in fp16; compiled quantization
and int8 GEMM), the same layer without a transform, the transform alone, ``torch._int_mm`` alone
and the fp16 matmul alone. Each case is timed eagerly and, on CUDA, replayed from a CUDA graph,
which removes the per-call CPU cost (Python, dispatch, launches) and leaves the kernels' time.
Microseconds per call, mean of 50 calls after 5 warm-up calls. On CPU the graph column repeats
the eager timing (CPU has no graphs) and fp16 is slow: the script is for GPUs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from trdq import kernels
from trdq import rotation as R
from trdq.demo.bench.measure import synchronizer
from trdq.layers import GroupTransform, IntLinear, QuantLinear
from trdq.timegroups import GroupState

SHAPES = ((1152, 1152), (1152, 4608), (4608, 1152))
CALLS, WARMUP = 50, 5


def _timeit(fn, device: str) -> float:
    """Mean microseconds per call over :data:`CALLS` back-to-back calls (one synchronization at
    each end: a sync per call would add its own latency to every GPU call of a few us)."""
    sync = synchronizer(device)
    for _ in range(WARMUP):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    sync()
    return (time.perf_counter() - start) / CALLS * 1e6


def _graphed(fn, device: str):
    """``fn`` captured once in a CUDA graph (warmed up on a side stream first); ``fn`` on CPU."""
    if device != "cuda":
        return fn
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _cases(c_in: int, c_out: int, rows: int, device: str) -> dict:
    lin = nn.Linear(c_in, c_out)
    blocks = [torch.linalg.qr(torch.randn(128, 128, dtype=torch.float64))[0] for _ in range(c_in // 128)]
    rotation = R.duquant_rotation(blocks, torch.randperm(c_in), blocks)
    t = GroupTransform(delta=torch.rand(c_in, dtype=torch.float64) + 0.5, rotation=rotation)
    state = GroupState()
    real = IntLinear.from_quant(QuantLinear.from_linear(lin, [t], 8, 8, state), 8, torch.float16).to(device)
    plain = IntLinear.from_quant(QuantLinear.from_linear(lin, [GroupTransform()], 8, 8, state), 8,
                                 torch.float16).to(device)
    real.compiled = plain.compiled = True
    fp16 = lin.half().to(device)
    x = torch.randn(rows, c_in, dtype=torch.float16, device=device)
    codes = torch.randint(-127, 127, (rows, c_in), dtype=torch.int8, device=device)
    w_codes = torch.randint(-127, 127, (c_out, c_in), dtype=torch.int8, device=device)
    return {"fp16 linear": lambda: fp16(x), "w8a8 real (duquant)": lambda: real(x),
            "w8a8 real (no transform)": lambda: plain(x), "transform only": lambda: real.transforms[0].apply(x),
            "int_mm only": lambda: kernels.int_mm(codes, w_codes.T), "fp16 mm only": lambda: x @ fp16.weight.T}


def run(rows: int = 2048) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    out = []
    with torch.inference_mode():
        for c_in, c_out in SHAPES:
            for name, fn in _cases(c_in, c_out, rows, device).items():
                eager = _timeit(fn, device)
                graph = _timeit(_graphed(fn, device), device)
                out.append({"in": c_in, "out": c_out, "case": name, "eager_us": eager, "graph_us": graph})
                print(c_in, c_out, name, f"eager {eager:.1f} us, graph {graph:.1f} us", flush=True)
    meta = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
            "rows": rows}
    return {"meta": meta, "rows": out}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trdq.demo.bench.layer_timing", description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the timings")
    parser.add_argument("--rows", type=int, default=2048, help="tokens per call (default 2048)")
    args = parser.parse_args(argv)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(run(args.rows), indent=1))


if __name__ == "__main__":
    main()
