"""Command line: ``python -m trdq generate|quantize|eval|bench ...``.

Strings become typed values here, at the boundary; the library never sees argparse.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
from pathlib import Path

from tqdm import tqdm

from trdq.config import METHODS, ROTATIONS, SEED_LIMIT, QuantConfig, TimeGroups, parse_bits
from trdq.interrupts import terminate_as_interrupt
from trdq.quantizer import check_bits

log = logging.getLogger("trdq")
# eval fuses its activation fake quantization (trdq.layers.fused_fake_quant) from this many prompts
# on: below, the few seconds of compiling outweigh what the fused loop saves
FUSE_FROM_PROMPTS = 32
REFERENCE_CACHE = Path("runs/eval-cache")  # eval --resume keeps the FP outputs here


def _integer(low: int, high: int | None = None):
    """An argparse type: an integer in ``low..high``; anything else is a usage error before any work."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def _finite(low: float | None = None):
    """An argparse type: a finite number, at least ``low`` if given (NaN would silently turn CFG
    off, inf blacken images)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and value < low):
            raise argparse.ArgumentTypeError(f"must be a finite number{'' if low is None else f' of at least {low:g}'}"
                                             f", got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="shapes-t2i",
                   help="shapes-t2i or shapes-t2v (embedded), a local diffusers folder, a hub id, or (generate, "
                        "eval) a quantized folder written by `python -m trdq quantize`")
    p.add_argument("--seed", type=_integer(0, SEED_LIMIT - 1), default=0)
    p.add_argument("--steps", type=_integer(1), default=None, help="sampling steps (default: the model's; 20 for the embedded ones)")
    p.add_argument("--guidance", type=_finite(), default=None, help="CFG scale (default: the model's; 4.5 for the embedded ones)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trdq", description="TR-DQ diffusion quantization toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate one image (or clip, for a video model) from a prompt")
    _add_model_args(gen)
    gen.add_argument("--base", default=None,
                     help="with --model a folder written by trdq.save (the earlier format, which needs its "
                          "full-precision model): that model (default: the embedded model its manifest names)")
    gen.add_argument("--real", action="store_true",
                     help="with --model a quantized folder: run it as real integer layers (default: simulated)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--out", type=Path, default=None,
                     help="image file (default out.png); for a video model a .gif (default out.gif) or a "
                          ".png strip of the frames")

    qu = sub.add_parser("quantize", help="quantize a model (simulated) and write it to a folder that "
                                         "generate --model takes")
    _add_model_args(qu)
    qu.add_argument("--method", default="trdq", help="one of " + ", ".join(METHODS))
    qu.add_argument("--bits", default="w8a8", help="WxAy, e.g. w4a8")
    qu.add_argument("--groups", default="4", help="time groups (trdq and viditq), or 'step' for one per step")
    qu.add_argument("--rotation", default="duquant", help="rotation of trdq: " + ", ".join(ROTATIONS))
    qu.add_argument("--alpha", default="search", help="trdq smoothing: 'search' or a fixed alpha in [0, 1]")
    qu.add_argument("--block-size", type=_integer(2), default=64, help="rotation block size")
    qu.add_argument("--shared-inputs", action="store_true",
                    help="one transform for the layers that read one input (each attention's q/k/v, a "
                         "cross-attention's k/v), fitted to their weights together and applied once per call")
    qu.add_argument("--attention-bits", default="off",
                    help="quantize the attention scores QK^T too: 8 (int8 queries and mean-subtracted keys), "
                         "any width 2..8, or 'off' (default: attention in floating point)")
    qu.add_argument("--prompts-file", type=Path, default=None,
                    help="calibration captions, one per line (default: drawn from an embedded model's grammar, "
                         "else trdq's general captions, trdq.captions; your own prompts are better)")
    qu.add_argument("--calib-prompts", type=_integer(1), default=16,
                    help="calibration prompts drawn when no --prompts-file is given")
    qu.add_argument("--out", type=Path, required=True,
                    help="folder to write, a diffusers pipeline folder that loads without the full-precision "
                         "weights (a new one, or an earlier quantized folder, which is replaced)")

    ev = sub.add_parser("eval", help="score prompt adherence and shapes_fd, write JSON records")
    _add_model_args(ev)
    ev.add_argument("--prompts-file", type=Path, default=None,
                    help="one caption of the model's grammar per line (default: drawn across the grammar)")
    ev.add_argument("--num-prompts", type=_integer(2), default=200,
                    help="prompts drawn evenly across the grammar when no --prompts-file is given")
    ev.add_argument("--methods", default="fp",
                    help="comma list of fp and " + ", ".join(METHODS) + " (quantized ones are simulated)")
    ev.add_argument("--bits", default="w8a8", help="comma list of WxAy settings, e.g. w8a8,w4a8,w4a4")
    ev.add_argument("--groups", default="4",
                    help="time groups for trdq and viditq; a comma list (e.g. 1,2,4,step) for an ablation, "
                         "'step' for one group per sampling step")
    ev.add_argument("--rotation", default="duquant",
                    help="rotation of trdq, or a comma list of " + ", ".join(ROTATIONS))
    ev.add_argument("--alpha", default="search",
                    help="trdq smoothing: 'search' (alpha_g searched per group) or a fixed alpha in [0, 1]; "
                         "a comma list for an ablation")
    ev.add_argument("--block-size", type=_integer(2), default=64, help="rotation block size")
    ev.add_argument("--shared-inputs", action="store_true",
                    help="one transform for the layers that read one input (each attention's q/k/v, a "
                         "cross-attention's k/v), fitted to their weights together and applied once per call")
    ev.add_argument("--attention-bits", default="off",
                    help="quantize the attention scores QK^T too: 8, any width 2..8, or 'off' (default); a comma "
                         "list (e.g. off,8) evaluates each")
    ev.add_argument("--fake-quant", default="auto", choices=("auto", "fused", "eager"),
                    help="activation fake quantization: fused (one loop under torch.compile, the same values bit "
                         "for bit, faster after a few seconds compiling), eager, or auto (fused from "
                         f"{FUSE_FROM_PROMPTS} prompts on, where the compilation pays off)")
    ev.add_argument("--device", default="auto", choices=("auto", "cpu"),
                    help="auto: each process on its own GPU (LOCAL_RANK) when there are GPUs, else the CPU; "
                         "cpu: the CPU always")
    ev.add_argument("--cfg-split", action="store_true",
                    help="quantize the CFG branches apart (own statistics and parameters, separate passes)")
    ev.add_argument("--uncond-bits", default=None,
                    help="with --cfg-split: WxAy of the unconditional branch, e.g. w4a4, or 'same' (as --bits); "
                         "a comma list runs each")
    ev.add_argument("--share-attention", default=None,
                    help="Attention-Sharing between the CFG branches, a comma list of rules: N (the N "
                         "self-attention layers whose cond/uncond maps are most alike), a cosine in [0, 1] "
                         "(every layer at least that alike), or P%% (the most alike layers until P%% of the "
                         "uncond score compute is skipped); each model runs once without and once per rule")
    ev.add_argument("--calib-prompts", type=_integer(1), default=16, help="calibration prompts (seeds apart from eval)")
    ev.add_argument("--batch-size", type=_integer(1), default=16)
    ev.add_argument("--no-eps-sqnr", action="store_true",
                    help="skip the per-step noise SQNR of quantized models (it re-runs both models along the "
                         "FP trajectory, about two more samplings each)")
    ev.add_argument("--resume", action="store_true",
                    help="keep the records already in --json (same model, prompts, seed, steps and guidance) "
                         "and evaluate only the models it lacks; records are saved after every model either way")
    ev.add_argument("--json", type=Path, required=True, help="where to write the records")
    ev.add_argument("--reference-cache", type=Path, default=None,
                    help="folder that keeps the FP outputs between runs, so that a staged or resumed run samples "
                         f"them once (default with --resume: {REFERENCE_CACHE})")

    be = sub.add_parser("bench", help="latency, weight bytes and peak memory of each backend, "
                                      "each in its own process")
    be.add_argument("--model", default="pixart-xl-random",
                    help="pixart-xl-random or latte-random (published configs, random weights, no download), "
                         "shapes-t2i, or a diffusers pipeline folder / hub id")
    be.add_argument("--backends", default=None,
                    help="comma list of fp32, bf16, fp16, trdq-wXaY-sim, trdq-wXaY-real[-per-group|-shared|-jit], "
                         "and the peers: fp32-compiled, bf16-compiled, fp16-compiled (the whole model under "
                         "torch.compile), torchao-w8a8 (torchao Int8DynamicActivationInt8WeightConfig), "
                         "quanto-w8a8 (optimum-quanto qint8 weights and activations, calibrated), both on "
                         "the layers trdq quantizes, in --real-dtype "
                         "(default: fp32,bf16,trdq-w8a8-sim,trdq-w8a8-real,trdq-w4a8-real)")
    be.add_argument("--deployment", default="per-group",
                    help="deployment(s) of real backends without a suffix, a comma list of per-group, shared, jit")
    be.add_argument("--resolution", type=_integer(8), default=None,
                    help="image side in pixels for the random models (default 512; latent = px / 8)")
    be.add_argument("--layers", type=_integer(1), default=None,
                    help="a random model's block count (smoke runs, or faster ones: weights are also "
                         "extrapolated to the published depth; latencies are not)")
    be.add_argument("--frames", type=_integer(1), default=None, help="latte-random: frames per video (default 16)")
    be.add_argument("--batch", type=_integer(1), default=2, help="per-step batch (2: the CFG pair)")
    be.add_argument("--warmup", type=_integer(0), default=2)
    be.add_argument("--repeats", type=_integer(1), default=None,
                    help="timed steps (default 5 for random models, 20 for pipelines)")
    be.add_argument("--e2e-repeats", type=_integer(0), default=3, help="timed images of a pipeline")
    be.add_argument("--threads", type=_integer(1), default=None, help="torch threads (default: every usable core)")
    be.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="where the timed models run (built and fitted on the CPU, then moved); cuda "
                         "synchronizes each step and also reports the CUDA allocator's peak")
    be.add_argument("--groups", type=_integer(1), default=4, help="time groups of the quantized backends")
    be.add_argument("--rotation", default="duquant",
                    help="rotation of the quantized backends: " + ", ".join(ROTATIONS))
    be.add_argument("--real-dtype", default=None, choices=("bfloat16", "float16", "float32"),
                    help="dtype of everything outside the integer layers of the real backends and the "
                         "torchao/quanto peers (default: float16 on cuda; on cpu bfloat16 where it is native, "
                         "else float32)")
    be.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="real backends: fuse each integer layer's transform, quantization and "
                         "dequantization with torch.compile (the first steps compile); torchao-w8a8 and "
                         "quanto-w8a8: compile the whole model (eager, with a note, where that fails)")
    be.add_argument("--share-attention", default=None,
                    help="also time each step with Attention-Sharing in the layers one rule picks: N (the N "
                         "most alike cond/uncond layers), a cosine in [0, 1], or a share of the uncond score "
                         "compute such as 25%%; default: not measured")
    be.add_argument("--mem-limit-gib", type=_finite(0.0), default=None,
                    help="address-space cap of each worker beyond its size after imports "
                         "(default 90%% of the memory available when it starts; 0: none)")
    be.add_argument("--seed", type=_integer(0, SEED_LIMIT - 1), default=0)
    be.add_argument("--shared-inputs", action="store_true",
                    help="quantize with one transform per attention's q/k/v (and cross-attention k/v), "
                         "applied once per call (QuantConfig.shared_inputs)")
    be.add_argument("--compact-rotations", action=argparse.BooleanOptionalAction, default=None,
                    help="real backends keep DuQuant's block rotations as their reflections and build the blocks "
                         "at every call (default: per-group dense, shared and jit compact)")
    be.add_argument("--memory-only", action="store_true",
                    help="build each backend and record its weights and memory, without timing or profiling "
                         "a step (minutes instead of an hour; weights of a random model run with --layers are "
                         "also extrapolated to its published depth)")
    be.add_argument("--cache", type=Path, default=None,
                    help="folder to keep quantized fits in and reuse across runs (keyed by a hash of model, "
                         "config and trdq's source); default: a temporary folder under runs/bench-cache/, "
                         "removed at the end")
    be.add_argument("--json", type=Path, required=True, help="where to write the report")
    return parser


def calibration_captions(caption_world, args) -> list[str]:
    """``--calib-prompts`` captions of a world, drawn with seeds apart from the evaluated ones."""
    return [s.caption for s in caption_world.sample_scenes(args.calib_prompts, seed=args.seed + 7919)]


def load_any(model: str, base: str | None = None, real: bool = False):
    """A model by name or folder; a quantized folder written by ``trdq.save_pretrained`` (simulated,
    or real integer if ``real``); or one written by ``trdq.save`` on ``base`` (by default the
    embedded model its manifest names; any other base must be named, since loading it is
    trusting the folder)."""
    from trdq.api import realize
    from trdq.models.loader import EMBEDDED, load_model
    from trdq.pretrained import from_pretrained, is_quantized_folder
    from trdq.serialization import load, saved_base

    if is_quantized_folder(model):
        if base is not None:
            raise ValueError(f"{model} holds everything it needs; --base is for folders written by trdq.save")
        return from_pretrained(model, execution="real integer" if real else "simulated")
    named = saved_base(model)
    if named is None:
        if base is not None:
            raise ValueError(f"--base is for a quantized folder (written by trdq.save); {model} is not one")
        if real:
            raise ValueError(f"--real is for a quantized folder (written by `python -m trdq quantize`); {model} is "
                             "not one")
        return load_model(model)
    if base is None and named not in EMBEDDED:
        raise ValueError(f"{model} was quantized from {named!r}; pass --base with that model (a local folder "
                         "or hub id) to load it")
    quantized = load(model, base=base or named)
    return realize(quantized) if real else quantized


def cmd_generate(args) -> None:
    from trdq.demo.worlds import WORLDS
    from trdq.sampling import generate, is_video

    model = load_any(args.model, args.base, args.real)
    video = is_video(model.pipe)
    out = args.out or Path("out.gif" if video else "out.png")
    suffixes = (".gif", ".png") if video else (".png", ".jpg", ".jpeg", ".webp", ".bmp")
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"--out {out}: a {'video' if video else 'image'} model writes {' or '.join(suffixes)} files")
    if (w := WORLDS.get(model.settings.world)) is not None and (unknown := w.unknown_words(args.prompt)):
        log.warning("words outside the model's vocabulary: %s (the model never saw them; grammar: %s)",
                    ", ".join(unknown), w.GRAMMAR)
    result = generate(model, [args.prompt], [args.seed], steps=args.steps, guidance=args.guidance)[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_media(result, out)
    log.info("wrote %s", out)


def write_media(result, path: Path, fps: int = 8) -> None:
    """Save an image (H, W, 3), or a clip (frames, H, W, 3) as a looping GIF or a PNG strip."""
    import numpy as np
    from PIL import Image

    if result.ndim == 3:
        Image.fromarray(result).save(path)
    elif path.suffix.lower() == ".gif":
        frames = [Image.fromarray(f) for f in result]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000 // fps, loop=0)
    else:
        Image.fromarray(np.concatenate(list(result), axis=1)).save(path)


def _items(text: str) -> list[str]:
    return [t.strip().lower() for t in text.split(",") if t.strip()]


def _groups(text: str, steps: int) -> int:
    if text == "step":
        return steps
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--groups takes positive integers or 'step', got {text!r}")
    return int(text)


def _alpha(text: str) -> float | None:
    if text == "search":
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--alpha takes 'search' or a number in [0, 1], got {text!r}") from None


def _attention_bits(text: str) -> int | None:
    if text == "off":
        return None
    if not text.isdigit():
        raise ValueError(f"--attention-bits takes 'off' or a width in 2..8, got {text!r}")
    return check_bits(int(text), "--attention-bits")


def quant_configs(args, steps: int = 20) -> tuple[bool, list[QuantConfig]]:
    """Turn ``--methods/--bits/--groups/--rotation/--alpha/--attention-bits`` into (include FP?,
    QuantConfigs).

    Every combination is made, and combinations a method treats alike (a rotation list for RTN,
    say) are kept once.
    """
    from trdq.demo.eval.runner import config_key, describe

    methods = _items(args.methods)
    unknown = [m for m in methods if m != "fp" and m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or args.methods!r}; choose from fp, {', '.join(METHODS)}")
    bits = [parse_bits(b) for b in _items(args.bits)]
    if not bits and methods != ["fp"]:
        raise ValueError(f"--bits {args.bits!r} names no bit setting; give e.g. w8a8,w4a8")
    cfg_split = getattr(args, "cfg_split", False)
    uncond_items = _items(getattr(args, "uncond_bits", None) or "same")
    if uncond_items != ["same"] and not cfg_split:
        raise ValueError("--uncond-bits needs --cfg-split (the branches share one model otherwise)")
    uncond_list = [None if u == "same" else parse_bits(u) for u in uncond_items]
    groups = [_groups(g, steps) for g in _items(args.groups)]
    rotations, alphas = _items(args.rotation), [_alpha(a) for a in _items(args.alpha)]
    attention = [_attention_bits(b) for b in _items(getattr(args, "attention_bits", None) or "off")]
    if bad := [r for r in rotations if r not in ROTATIONS]:
        raise ValueError(f"unknown rotation(s) {bad}; choose from {', '.join(ROTATIONS)}")
    configs, seen = [], set()
    for m in methods:
        for (w, a), g, r, alpha, uncond, qk in itertools.product(bits, groups, rotations, alphas, uncond_list,
                                                                  attention):
            if m == "fp":
                continue
            config = QuantConfig(method=m, w_bits=w, a_bits=a, time_groups=TimeGroups(g), rotation=r,
                                 alpha=alpha, block_size=args.block_size, cfg_split=cfg_split,
                                 uncond_bits=uncond, attention_bits=qk,
                                 shared_inputs=getattr(args, "shared_inputs", False))
            TimeGroups(describe(config)["num_groups"]).step_to_group(steps)  # too many groups fails now
            key = config_key(config)
            if key not in seen:
                seen.add(key)
                configs.append(config)
    return "fp" in methods, configs


def cmd_quantize(args) -> None:
    import time

    from trdq.api import calibrate, convert, prepare
    from trdq.captions import general_captions, read_captions
    from trdq.demo.worlds import WORLDS
    from trdq.models.loader import load_model
    from trdq.pretrained import check_destination, is_quantized_folder, save_pretrained

    check_destination(args.out)  # now, not after the calibration
    if is_quantized_folder(args.model):
        raise ValueError(f"{args.model} is quantized already; quantize from the full-precision model it came from")
    model = load_model(args.model)
    args.methods = args.method
    include_fp, configs = quant_configs(args, args.steps or model.settings.steps)
    if include_fp or len(configs) != 1:
        raise ValueError(f"quantize writes one model: give one quantized --method ({', '.join(METHODS)}) and one "
                         "value each for --bits, --groups, --rotation and --alpha")
    config = configs[0]
    if args.prompts_file is not None:
        prompts = [text for _, text in read_captions(args.prompts_file)]
    elif (caption_world := WORLDS.get(model.settings.world)) is not None:
        prompts = calibration_captions(caption_world, args)
    else:  # a model outside the shapes worlds: general captions, unless the user gives their own
        prompts = general_captions(args.calib_prompts)
    t0 = time.perf_counter()
    with tqdm(total=len(prompts), desc=f"calibrating on {len(prompts)} prompts", unit="prompt") as bar:
        prepared = calibrate(prepare(model, config), prompts, steps=args.steps, guidance=args.guidance,
                             progress=lambda done, total: bar.update(done - bar.n))
    log.info("fitting %s %s to the statistics of %d layers", config.method, config.bits, len(prepared.layers))
    qmodel = convert(prepared)
    log.info("quantized %s with %s %s in %.1f s", model.name, config.method, config.bits, time.perf_counter() - t0)
    path = save_pretrained(qmodel, args.out)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    log.info("wrote %s (%.1f MiB); generate from it with: python -m trdq generate --model %s --prompt ...",
             path, size / 2**20, path)


def cmd_eval(args) -> None:
    from trdq.attention import ShareRule
    from trdq.demo.eval.runner import (
        check_writable,
        config_key,
        evaluate,
        read_prompts_file,
        read_records,
        record_key,
        write_json,
    )
    from trdq.demo.eval.shards import Shards
    from trdq.demo.worlds import world
    from trdq.layers import fused_fake_quant

    shards = Shards.from_environment()  # several processes under accelerate launch / torchrun
    if not shards.main:  # one process reports and writes; the others sample their share
        log.setLevel(logging.WARNING)
    model = load_any(args.model)  # a quantized folder is evaluated as it is
    if (device := "cpu" if args.device == "cpu" else Shards.device()) != "cpu":
        model.pipe.to(device)
    caption_world = world(model.settings.world)
    include_fp, configs = quant_configs(args, args.steps or model.settings.steps)
    own = ("fp",) if model.quant is None else config_key(model.quant.config)  # the record of --model itself
    sharing = [ShareRule.parse(r) for r in (args.share_attention or "").split(",") if r.strip()]
    if args.prompts_file is not None:
        scenes = read_prompts_file(args.prompts_file, caption_world)
    else:
        scenes = caption_world.sample_scenes(args.num_prompts, seed=args.seed)
    calibration = calibration_captions(caption_world, args)
    run = {"model": model.name, "num_prompts": len(scenes), "seed": args.seed,
           "steps": args.steps or model.settings.steps,
           "guidance": model.settings.guidance if args.guidance is None else args.guidance}
    saved = read_records(args.json, run) if args.resume else []
    if saved:
        finished = {record_key(r) for r in saved}
        include_fp = include_fp and own not in finished
        configs = [c for c in configs if config_key(c) not in finished]
        log.info("%s holds %d records; %d quantized models left to evaluate", args.json, len(saved), len(configs))
        if not include_fp and not configs:
            return
    if shards.main:
        check_writable(args.json)  # now, not after the run
    bars: dict[str, tqdm] = {}

    def save(new: list[dict]) -> None:
        saved.extend(new)
        if shards.main:
            write_json(saved, args.json)

    def progress(label: str, done: int, total: int) -> None:
        label += f" ({shards.size} processes, this one's share)" if shards.size > 1 else ""
        bar = bars.setdefault(label, tqdm(total=total, desc=label, unit="img"))
        bar.update(done - bar.n)

    fuse = args.fake_quant == "fused" or (args.fake_quant == "auto" and len(scenes) >= FUSE_FROM_PROMPTS)
    with fused_fake_quant(fuse):
        records = evaluate(model, scenes, configs, include_fp=include_fp, seed=args.seed, steps=args.steps,
                           guidance=args.guidance, calibration_prompts=calibration, batch_size=args.batch_size,
                           sharing=sharing, eps_sqnr=not args.no_eps_sqnr,
                           progress=progress if shards.main else None, on_records=save, shards=shards,
                           reference_cache=args.reference_cache or (REFERENCE_CACHE if args.resume else None))
    for bar in bars.values():
        bar.close()
    for r in records:
        extra = f", psnr_vs_fp {r['psnr_vs_fp']:.2f} dB" if "psnr_vs_fp" in r else ""
        if r.get("attention_bits"):
            extra += f", attention scores at {r['attention_bits']} bits"
        if r.get("shared_inputs"):
            extra += ", one transform per attention input"
        if "sharing" in r:
            extra += f", sharing {r['sharing']} ({r['attn_score_skipped']:.0%} of uncond scores skipped)"
        log.info("%s %s (%s): adherence %.3f, shapes_fd %.2f%s", r["method"], r["bits"], r["execution"],
                 r["adherence"], r["shapes_fd"], extra)
    log.info("wrote %d records to %s", len(saved), args.json)


def cmd_bench(args) -> None:
    from trdq.demo import bench

    overrides = {k: v for k, v in (("num_layers", args.layers), ("video_length", args.frames))
                 if v is not None}
    spec = bench.BenchSpec(model=args.model, resolution=args.resolution, batch=args.batch, warmup=args.warmup,
                           repeats=args.repeats, e2e_repeats=args.e2e_repeats, threads=args.threads,
                           device=args.device,
                           groups=args.groups, rotation=args.rotation, share_attention=args.share_attention,
                           real_dtype=args.real_dtype, compile=args.compile, seed=args.seed, overrides=overrides,
                           mem_limit_gib=args.mem_limit_gib, timing=not args.memory_only,
                           compact_rotations=args.compact_rotations, shared_inputs=args.shared_inputs)
    backends = bench.parse_backends(_items(args.backends or ",".join(bench.DEFAULT_BACKENDS)),
                                    _items(args.deployment))
    report = bench.run(spec, backends, cache=args.cache,
                       progress=lambda i, n, r: log.info("[%d/%d] %s", i, n, bench.summary(r)))
    bench.save_report(report, args.json)
    log.info("wrote %s", args.json)
    if failed := [r["backend"] for r in report["results"] if r["status"] != "ok"]:
        raise ValueError(f"{len(failed)} of {len(backends)} backends failed ({', '.join(failed)}); "
                         f"their errors are in {args.json}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        with terminate_as_interrupt():  # workers are stopped and partial files removed on the way out
            {"generate": cmd_generate, "quantize": cmd_quantize, "eval": cmd_eval,
             "bench": cmd_bench}[args.command](args)
    except (ValueError, FileNotFoundError, OSError) as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt as err:
        log.error("interrupted%s; workers stopped, partial files removed, finished records kept",
                  f" by {err}" if str(err) else "")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
