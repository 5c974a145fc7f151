"""``python -m analysis report``: quantize a model and write its HTML report.

    python -m analysis report --model shapes-t2i --method trdq --bits w4a8 --groups 4 \\
        --prompts 4 --steps 20 --out runs/report.html

Calibration prompts come from the model's caption world (:func:`trdq.demo.worlds.world`), so image
and video models work alike; the report is measured on as many other prompts of that world.
Strings become a :class:`trdq.QuantConfig` here, at the boundary.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from trdq.config import METHODS, ROTATIONS, QuantConfig, TimeGroups, parse_bits

log = logging.getLogger("analysis")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``report`` options, for a standalone parser or a subcommand of ``python -m analysis``."""
    parser.add_argument("--model", default="shapes-t2i", help="embedded name, diffusers folder or hub id")
    parser.add_argument("--method", default="trdq", choices=METHODS)
    parser.add_argument("--bits", default="w4a8", help="WxAy, e.g. w8a8, w4a8, w4a4")
    parser.add_argument("--groups", type=int, default=4, help="time groups")
    parser.add_argument("--rotation", default="duquant", choices=ROTATIONS)
    parser.add_argument("--block-size", type=int, default=64, help="rotation block size")
    parser.add_argument("--prompts", type=int, default=4, help="calibration prompts (and as many for analysis)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (the model's default if omitted)")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", nargs="+", default=None,
                        help="fnmatch patterns of the layers in the table (default: the first block's)")
    parser.add_argument("--layer", default=None, help="the layer to draw (default: the first selected)")
    parser.add_argument("--group", type=int, default=0, help="time group of the histogram and surface")
    parser.add_argument("--out", type=Path, required=True, help="the .html file to write")
    return parser


def run(args: argparse.Namespace) -> Path:
    """Load, quantize, measure and write the report the parsed ``args`` describe."""
    import trdq
    from analysis.report import DEFAULT_LAYERS, build_report
    from trdq.demo.worlds import world
    from trdq.models.loader import load_model

    w_bits, a_bits = parse_bits(args.bits)
    config = QuantConfig(method=args.method, w_bits=w_bits, a_bits=a_bits, time_groups=TimeGroups(args.groups),
                         rotation=args.rotation, block_size=args.block_size, seed=args.seed)
    fp = load_model(args.model)
    scenes = world(fp.settings.world).sample_scenes(2 * args.prompts, seed=args.seed)
    calibration = [s.caption for s in scenes[:args.prompts]]
    analysis = [s.caption for s in scenes[args.prompts:]]  # other prompts of the same shuffled pass
    start = time.perf_counter()
    qmodel = trdq.quantize(fp, config, calibration, steps=args.steps, guidance=args.guidance, seed=args.seed)
    log.info("%s %s quantized in %.1f s", args.method, config.bits, time.perf_counter() - start)
    notes = {"method": args.method, "bits": config.bits, "calibration prompts": len(calibration),
             "analysis prompts": len(analysis), "steps": args.steps or fp.settings.steps,
             "guidance": fp.settings.guidance if args.guidance is None else args.guidance,
             "execution": "simulated"}
    return build_report(fp, qmodel, analysis, args.out, args.layers or DEFAULT_LAYERS, args.layer, args.group, args.steps,
                        args.guidance, args.seed + len(calibration), notes)


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m analysis report", description=__doc__))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    log.info("report -> %s", run(args))
    return 0
