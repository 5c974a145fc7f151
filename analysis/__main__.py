"""``python -m analysis outliers|readme|report|similarity|app-timing|screenshots|examples|checkpoints``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from analysis.report_cli import add_arguments as add_report_arguments
from trdq.demo import shapes
from trdq.demo.eval.runner import write_json

log = logging.getLogger("analysis")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis")
    sub = parser.add_subparsers(dest="command", required=True)
    out = sub.add_parser("outliers", help="activation outlier statistics per layer and step")
    out.add_argument("--model", default="shapes-t2i")
    out.add_argument("--num-prompts", type=int, default=16)
    out.add_argument("--steps", type=int, default=20)
    out.add_argument("--guidance", type=float, default=4.5)
    out.add_argument("--seed", type=int, default=0)
    out.add_argument("--json", type=Path, required=True)
    sub.add_parser("readme", help="rewrite the tables of README.md and docs/*.md from assets/results/*.json")
    add_report_arguments(sub.add_parser("report", help="quantize a model and write a one-file HTML report"))
    sim = sub.add_parser("similarity", help="cond/uncond attention similarity per layer, head and step (JSON)")
    sim.add_argument("--model", default="shapes-t2i")
    sim.add_argument("--num-prompts", type=int, default=8)
    sim.add_argument("--steps", type=int, default=None)
    sim.add_argument("--guidance", type=float, default=None)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--json", type=Path, required=True)
    timing = sub.add_parser("app-timing", help="time `import app` and the first default comparison")
    timing.add_argument("--threads", type=int, default=None)
    timing.add_argument("--json", type=Path, default=Path("assets/results/app-timing.json"))
    examples = sub.add_parser("examples", help="precompute the app's first answers into assets/examples")
    examples.add_argument("--model", default="shapes-t2i,shapes-t2v", help="comma list of embedded models")
    examples.add_argument("--out", type=Path, default=None, help="default: assets/examples")
    ckpt = sub.add_parser("checkpoints", help="stand-alone quantized folders: size against bf16, memory to load")
    ckpt.add_argument("--model", default="pixart-xl-random")
    ckpt.add_argument("--layers", type=int, default=None, help="a random model's block count (default: published)")
    ckpt.add_argument("--bits", default="w8a8,w4a8")
    ckpt.add_argument("--groups", type=int, default=1)
    ckpt.add_argument("--json", type=Path, required=True)
    shots = sub.add_parser("screenshots", help="screenshot every tab of the app in headless chromium")
    shots.add_argument("--out", type=Path, default=Path("assets/screenshots"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")

    if args.command == "outliers":
        from analysis.outliers import collect
        from trdq.models.loader import load_model

        prompts = [s.caption for s in shapes.sample_scenes(args.num_prompts, seed=args.seed)]
        records = collect(load_model(args.model), prompts, seed=args.seed, steps=args.steps,
                          guidance=args.guidance)
        write_json(records, args.json)
        log.info("%d records -> %s", len(records), args.json)
    elif args.command == "similarity":
        from trdq.attention import measure_similarity
        from trdq.demo.worlds import world
        from trdq.models.loader import load_model

        model = load_model(args.model)
        scenes = world(model.settings.world).sample_scenes(args.num_prompts, seed=args.seed + 7919)
        sim = measure_similarity(model, [s.caption for s in scenes], steps=args.steps, guidance=args.guidance,
                                 seed=args.seed)
        write_json({"model": args.model, "layers": sim.layers, "timesteps": sim.timesteps,
                    "score_flops": sim.score_flops.tolist(), "per_layer": sim.per_layer().tolist(),
                    "records": sim.records()}, args.json)
        log.info("%d layers x %d steps -> %s", len(sim.layers), len(sim.timesteps), args.json)
    elif args.command == "app-timing":
        from analysis.app_timing import measure

        write_json(measure(args.threads), args.json)
        log.info("wrote %s", args.json)
    elif args.command == "checkpoints":
        from analysis.checkpoints import measure

        write_json(measure(args.model, args.layers, tuple(b.strip() for b in args.bits.split(",")), args.groups),
                   args.json)
        log.info("wrote %s", args.json)
    elif args.command == "screenshots":
        from analysis.screenshots import take

        take(args.out)
    elif args.command == "examples":
        import time

        from analysis.examples import EXAMPLES_DIR, build

        for name in [m.strip() for m in args.model.split(",") if m.strip()]:
            t0 = time.perf_counter()
            written = build(name, args.out or EXAMPLES_DIR)
            log.info("%s: %s in %.0f s", name, ", ".join(str(p) for p in written), time.perf_counter() - t0)
    elif args.command == "report":
        from analysis.report_cli import run

        log.info("report -> %s", run(args))
    else:
        from analysis.readme import update

        log.info("tables rewritten: %s", ", ".join(update()) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
