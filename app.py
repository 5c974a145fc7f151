"""trdq app: full-precision and TR-DQ (or baseline) models side by side, and why they differ.

Run ``python app.py`` and open the printed address. Tabs:

- **Compare**: FP and quantized outputs (images, or clips of the video model) from the same seed,
  each with latency, peak memory, weight size and closeness to FP, labelled "simulated" (fake
  quantization in floating point) or "real integer" (int8 GEMMs, packed 4-bit weights).
- **Quantize**: method, bits, time groups, alpha_g per group (searched or set), rotation, CFG
  split and Attention-Sharing; calibrates once per configuration and caches the result.
- **Distributions**: a layer's activations and weights before and after smoothing and rotation,
  per time group.
- **Trajectory**: the per-step noise-prediction error against FP, shaded by time group, and the
  cond/uncond attention similarity per layer and step.
- **Benchmark**: the measured latency and memory of ``python -m trdq bench``.

Handlers are plain functions of the UI values (tested directly); errors become ``gr.Error``.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go

import trdq
from trdq.config import METHODS, ROTATIONS, parse_bits
from trdq.eval.metrics import psnr, ssim
from trdq.models.loader import EMBEDDED
from trdq.worlds import world

MODELS = {"shapes-t2i (image, PixArt)": "shapes-t2i", "shapes-t2v (video, Latte)": "shapes-t2v"}
AVAILABLE = [label for label, name in MODELS.items() if (EMBEDDED[name] / "model_index.json").exists()]
BITS = ["w8a8", "w6a6", "w4a8", "w4a4"]
MAX_GROUPS = 8  # alpha sliders shown; more groups than this are searched or take one alpha
CALIBRATION = {"shapes-t2i": 8, "shapes-t2v": 4}  # prompts per calibration (video costs 8 frames each)
ANALYSIS_PROMPTS = 2
DISPLAY_SCALE = 4  # the embedded models draw 64x64; shown at 256x256
RESULTS = Path(__file__).resolve().parent / "assets" / "results"
EXAMPLES = {
    "shapes-t2i": ["a large red circle in the center", "a small blue square on the left",
                   "a large yellow star at the top", "a small purple triangle at the bottom"],
    "shapes-t2v": ["a large green star moving right", "a small red circle moving up",
                   "a large blue square moving left", "a small orange triangle moving down"],
}
EXECUTIONS = {"simulated": None, "real integer (per-group weights)": "per-group",
              "real integer (one shared weight copy)": "shared"}
SHARING = ["off", "1", "2", "4", "0.9", "25%", "50%"]


# ---------------------------------------------------------------- models, cached per process


@functools.lru_cache(maxsize=2)
def fp_model(name: str) -> trdq.LoadedModel:
    """A full-precision embedded model, loaded once per process."""
    return trdq.load_model(name)


def calibration_prompts(name: str) -> list[str]:
    caption_world = world(fp_model(name).settings.world)
    return [s.caption for s in caption_world.sample_scenes(CALIBRATION[name], seed=2024)]


@functools.lru_cache(maxsize=8)
def quantized_model(name: str, config: trdq.QuantConfig) -> trdq.LoadedModel:
    """One calibrated (simulated) model per model and configuration."""
    return trdq.quantize(fp_model(name), config, calibration_prompts(name))


@functools.lru_cache(maxsize=8)
def executed_model(name: str, config: trdq.QuantConfig, execution: str) -> trdq.LoadedModel:
    """The quantized model of ``config`` run as ``execution`` (a key of :data:`EXECUTIONS`)."""
    deployment = EXECUTIONS[execution]
    simulated = quantized_model(name, config)
    return simulated if deployment is None else trdq.realize(simulated, deployment, base=fp_model(name))


@functools.lru_cache(maxsize=2)
def similarity(name: str):
    """Cond/uncond attention similarity of the FP model on the calibration prompts."""
    from trdq.attention import measure_similarity

    return measure_similarity(fp_model(name), calibration_prompts(name))


# ---------------------------------------------------------------- UI values -> typed values


def model_name(label: str) -> str:
    if label not in MODELS:
        raise gr.Error(f"Unknown model {label!r}; choose one of: {', '.join(AVAILABLE)}.")
    name = MODELS[label]
    if label not in AVAILABLE:
        raise gr.Error(f"{name} is not in assets/ on this machine; restore it with `git checkout -- assets` "
                       "or train it (README, 'Retraining').")
    return name


def make_config(method: str, bits: str, groups: float, rotation: str, block_size: float, search_alpha: bool,
                alphas: list[float], cfg_split: bool = False, uncond_bits: str = "same") -> trdq.QuantConfig:
    """UI values -> a validated config; invalid values become a UI error that says what to change."""
    try:
        w_bits, a_bits = parse_bits(bits)
        n = int(groups)
        if search_alpha:
            alpha = None
        elif n <= len(alphas):
            alpha = tuple(float(a) for a in alphas[:n])
        else:
            raise ValueError(f"alpha sliders cover {len(alphas)} groups; with {n} groups search alpha_g instead")
        uncond = None if not cfg_split or uncond_bits in (None, "", "same") else parse_bits(uncond_bits)
        return trdq.QuantConfig(method=method, w_bits=w_bits, a_bits=a_bits, time_groups=trdq.TimeGroups(n),
                                rotation=rotation, alpha=alpha, block_size=int(block_size), cfg_split=bool(cfg_split),
                                uncond_bits=uncond)
    except ValueError as err:
        raise gr.Error(str(err)) from None


def sharing_plan(name: str, share: str):
    """The Attention-Sharing choice -> a plan over the FP model's measured similarity (None: off)."""
    from trdq.attention import ShareRule, select_layers

    if share in (None, "", "off"):
        return None
    try:
        return select_layers(similarity(name), rule=ShareRule.parse(str(share)))
    except ValueError as err:
        raise gr.Error(str(err)) from None


# ---------------------------------------------------------------- measuring one sample


def _peak_bytes() -> int | None:
    from trdq.bench.measure import proc_bytes

    return proc_bytes("/proc/self/status", "VmHWM")


def _sample(model: trdq.LoadedModel, prompt: str, seed: int, steps: int, guidance: float,
            plan=None) -> tuple[np.ndarray, dict]:
    """One output and the facts about producing it: seconds, peak RSS of the process while it ran."""
    import contextlib

    from trdq.attention import share_attention
    from trdq.bench.measure import reset_peak

    reset = reset_peak()
    t0 = time.perf_counter()
    with share_attention(model, plan) if plan is not None else contextlib.nullcontext():
        out = trdq.generate(model, [prompt], [seed], steps=steps, guidance=guidance)[0]
    facts = {"seconds": time.perf_counter() - t0,
             "peak_mib": (_peak_bytes() or 0) / 2**20 if reset else None}
    return out, facts


def weight_mib(model: trdq.LoadedModel) -> float:
    from trdq.bench.measure import weight_bytes

    return weight_bytes(model.pipe.transformer)["total"] / 2**20


def media(output: np.ndarray, scale: int = DISPLAY_SCALE) -> np.ndarray | str:
    """An image enlarged ``scale`` times (nearest neighbour, so every pixel stays visible); a clip
    enlarged alike as a looping GIF file (what gr.Image shows animated)."""
    output = output.repeat(scale, axis=-3).repeat(scale, axis=-2)
    if output.ndim == 3:
        return output
    from trdq.cli import write_media

    path = Path(tempfile.mkdtemp(prefix="trdq-")) / "clip.gif"
    write_media(output, path)
    return str(path)


def _facts(label: str, facts: dict, weights: float) -> str:
    peak = "-" if facts["peak_mib"] is None else f"{facts['peak_mib']:.0f} MiB"
    return (f"**{label}** · {facts['seconds']:.2f} s · peak RSS {peak} · transformer weights "
            f"{weights:.1f} MiB")


def check_prompt(name: str, prompt: str, steps: float, groups: float) -> str:
    prompt = (prompt or "").strip()
    if not prompt:
        raise gr.Error(f"Type a prompt first, e.g. '{EXAMPLES[name][0]}'.")
    if not 1 <= int(steps) <= 100:
        raise gr.Error(f"Steps must be between 1 and 100, got {steps}.")
    if int(groups) > int(steps):
        raise gr.Error(f"{int(groups)} time groups need at least as many sampling steps; raise the steps "
                       "or lower the groups.")
    caption_world = world(fp_model(name).settings.world)
    if unknown := caption_world.unknown_words(prompt):
        gr.Warning(f"The model never saw these words: {', '.join(unknown)}. It knows: {caption_world.GRAMMAR}.")
    return prompt


# ---------------------------------------------------------------- handlers


def quantize(model_label: str, method: str, bits: str, groups: float, rotation: str, block_size: float,
             search_alpha: bool, cfg_split: bool, uncond_bits: str, *alphas, progress=gr.Progress()) -> str:
    """Handler of the Quantize button: calibrate (once per configuration) and say what was made."""
    name = model_name(model_label)
    config = make_config(method, bits, groups, rotation, block_size, search_alpha, list(alphas), cfg_split,
                         uncond_bits)
    progress(0.1, desc=f"calibrating {method} {config.bits} on {CALIBRATION[name]} prompts")
    cached = quantized_model.cache_info().currsize
    t0 = time.perf_counter()
    try:
        q = quantized_model(name, config)
    except ValueError as err:
        raise gr.Error(str(err)) from None
    seconds = time.perf_counter() - t0
    fresh = quantized_model.cache_info().currsize > cached
    layers = sum(1 for m in q.pipe.transformer.modules() if type(m).__name__ == "QuantLinear")
    alpha = "searched per group" if config.alpha is None else ", ".join(f"{a:g}" for a in config.alphas())
    return (f"**{name} · {method} {config.bits} · simulated** — {layers} linear layers quantized, "
            f"{config.time_groups.num_groups} time groups, alpha_g {alpha}, rotation {config.rotation} "
            f"(block {config.block_size}){', CFG split' if config.cfg_split else ''}. "
            + (f"Calibrated in {seconds:.1f} s." if fresh else "Taken from the cache (calibrated earlier)."))


def compare(model_label: str, prompt: str, seed: float, steps: float, guidance: float, method: str, bits: str,
            groups: float, rotation: str, block_size: float, search_alpha: bool, cfg_split: bool,
            uncond_bits: str, share: str, execution: str, *alphas,
            progress=gr.Progress()) -> tuple[np.ndarray | str, str, np.ndarray | str, str]:
    """Handler of the Compare button: FP and quantized outputs from one seed, with facts about each."""
    name = model_name(model_label)
    prompt = check_prompt(name, prompt, steps, groups)
    config = make_config(method, bits, groups, rotation, block_size, search_alpha, list(alphas), cfg_split,
                         uncond_bits)
    if execution not in EXECUTIONS:
        raise gr.Error(f"Unknown execution {execution!r}; choose one of: {', '.join(EXECUTIONS)}.")
    if config.cfg_split and share not in (None, "", "off"):
        raise gr.Error("Attention-Sharing needs both CFG branches in one batch; turn off the CFG split or "
                       "the sharing.")
    seed, steps = int(seed), int(steps)
    progress(0.05, desc="full precision")
    fp = fp_model(name)
    fp_out, fp_facts = _sample(fp, prompt, seed, steps, guidance)
    progress(0.3, desc=f"calibrating {method} {config.bits} (once per setting)")
    try:
        q = executed_model(name, config, execution)
        plan = sharing_plan(name, share)
    except ValueError as err:
        raise gr.Error(str(err)) from None
    progress(0.8, desc=f"{method} {config.bits}")
    q_out, q_facts = _sample(q, prompt, seed, steps, guidance, plan)
    frames_q, frames_fp = q_out.reshape(-1, *q_out.shape[-3:]), fp_out.reshape(-1, *fp_out.shape[-3:])
    db = float(np.mean(np.minimum(psnr(frames_q, frames_fp), 100.0)))
    similar = float(np.mean(ssim(frames_q, frames_fp)))
    fp_info = _facts("full precision (fp32)", fp_facts, weight_mib(fp)) + f" · {steps} steps · seed {seed}"
    shared = "" if plan is None else f" · sharing {len(plan.layers)} layers ({plan.skipped:.0%} of uncond scores)"
    q_info = (_facts(f"{method} {config.bits.upper()} · {q.quant.execution}", q_facts, weight_mib(q))
              + f" · PSNR vs FP {db:.2f} dB · SSIM vs FP {similar:.3f}{shared}")
    return media(fp_out), fp_info, media(q_out), q_info


def layer_choices(model_label: str, method: str, bits: str, groups: float, rotation: str, block_size: float,
                  search_alpha: bool, cfg_split: bool, uncond_bits: str, *alphas):
    """The quantized layers of the current configuration, for the Distributions picker."""
    from analysis.collect import quantized_layers

    name = model_name(model_label)
    config = make_config(method, bits, groups, rotation, block_size, search_alpha, list(alphas), cfg_split,
                         uncond_bits)
    names = quantized_layers(quantized_model(name, config))
    return gr.Dropdown(choices=names, value=names[0]), gr.Slider(maximum=config.time_groups.num_groups - 1)


@functools.lru_cache(maxsize=16)
def _collected(name: str, config: trdq.QuantConfig, layer: str, steps: int, guidance: float):
    from analysis.collect import collect_layer

    prompts = [s.caption for s in world(fp_model(name).settings.world).sample_scenes(ANALYSIS_PROMPTS, seed=99)]
    return collect_layer(fp_model(name), quantized_model(name, config), layer, prompts, steps, guidance)


def distributions(model_label: str, layer: str, group: float, steps: float, guidance: float, method: str,
                  bits: str, groups: float, rotation: str, block_size: float, search_alpha: bool, cfg_split: bool,
                  uncond_bits: str, *alphas, progress=gr.Progress()):
    """Handler of the Distributions tab: figures and statistics of one layer in one time group."""
    from analysis.report import layer_figures, layer_table

    name = model_name(model_label)
    config = make_config(method, bits, groups, rotation, block_size, search_alpha, list(alphas), cfg_split,
                         uncond_bits)
    if not layer:
        raise gr.Error("Pick a layer first (press 'List layers').")
    progress(0.2, desc=f"sampling {ANALYSIS_PROMPTS} prompts through {layer}")
    try:
        collected = _collected(name, config, layer, int(steps), float(guidance))
        figs = layer_figures(collected, int(group))
    except (ValueError, KeyError) as err:
        raise gr.Error(str(err)) from None
    table = layer_table({layer: collected}).round(3)
    return figs["histogram"], figs["surface"], figs["channel-absmax"], figs["weight-absmax"], table


def trajectory(model_label: str, steps: float, guidance: float, method: str, bits: str, groups: float,
               rotation: str, block_size: float, search_alpha: bool, cfg_split: bool, uncond_bits: str, *alphas,
               progress=gr.Progress()):
    """Handler of the Trajectory tab: per-step error vs FP, and cond/uncond attention similarity."""
    from analysis.figures import attention_similarity_figure, error_curve_figure
    from trdq.eval.trajectory import eps_sqnr_per_step

    name = model_name(model_label)
    config = make_config(method, bits, groups, rotation, block_size, search_alpha, list(alphas), cfg_split,
                         uncond_bits)
    if int(groups) > int(steps):
        raise gr.Error(f"{int(groups)} time groups need at least as many sampling steps.")
    progress(0.2, desc="noise-prediction error along the FP trajectory")
    prompts = [s.caption for s in world(fp_model(name).settings.world).sample_scenes(ANALYSIS_PROMPTS, seed=99)]
    q = quantized_model(name, config)
    per_step = eps_sqnr_per_step(fp_model(name), q, prompts, list(range(len(prompts))), steps=int(steps),
                                 guidance=float(guidance))
    curve = error_curve_figure(per_step, config.time_groups,
                               title=f"{method} {config.bits}: noise-prediction SQNR vs FP per step")
    progress(0.7, desc="cond/uncond attention similarity")
    heat = attention_similarity_figure(similarity(name))
    return curve, heat


def benchmark_files() -> list[str]:
    return sorted(p.name for p in RESULTS.glob("bench-*.json"))


def benchmark(file: str) -> tuple[str, go.Figure]:
    """Handler of the Benchmark tab: the table of a bench report and a chart of step time and weights."""
    from analysis.readme import bench_table

    path = RESULTS / (file or "")
    if not file or not path.exists():
        raise gr.Error(f"No benchmark report {file!r}; run `python -m trdq bench ... --json "
                       "assets/results/bench-NAME.json` first.")
    ok = [r for r in json.loads(path.read_text())["results"] if r["status"] == "ok"]
    frame = pd.DataFrame({"backend": [r["backend"] for r in ok],
                          "step (ms)": [r["step_ms"]["median"] for r in ok],
                          "weights (MiB)": [r["weight_bytes"]["total"] / 2**20 for r in ok]})
    # offset groups keep the two bars side by side: on two y axes plotly would draw them on top of each other
    fig = go.Figure([go.Bar(name="step (ms)", x=frame["backend"], y=frame["step (ms)"], offsetgroup=0),
                     go.Bar(name="weights (MiB)", x=frame["backend"], y=frame["weights (MiB)"], yaxis="y2",
                            offsetgroup=1)])
    fig.update_layout(barmode="group", title=file, yaxis={"title": "step (ms)"},
                      yaxis2={"title": "weights (MiB)", "overlaying": "y", "side": "right"})
    return bench_table(path), fig


def examples_for(model_label: str):
    name = MODELS.get(model_label, "shapes-t2i")
    return gr.Textbox(value=EXAMPLES[name][0])


# ---------------------------------------------------------------- layout


INTRO = (
    "# trdq\nTR-DQ post-training quantization for diffusion transformers: time groups with their own "
    "smoothing alpha_g, and DuQuant-style rotation + permutation of the outlier channels. The embedded "
    "models are a PixArt-alpha image pipeline and a Latte video pipeline trained on the shapes world. "
    "Quantized models run **simulated** (fake quantization in floating point: the method's numerics) or "
    "as **real integer** code (int8 GEMMs, 4-bit weights packed two per byte)."
)

with gr.Blocks(title="trdq: time-rotation diffusion quantization") as demo:
    gr.Markdown(INTRO)
    with gr.Row():
        model = gr.Radio(AVAILABLE, value=AVAILABLE[0], label="Model")
        steps = gr.Slider(1, 50, value=20, step=1, label="Sampling steps (DDIM)")
        guidance = gr.Slider(1.0, 10.0, value=4.5, step=0.5, label="Guidance scale")
    with gr.Tab("Compare"):
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", value=EXAMPLES["shapes-t2i"][0])
                seed = gr.Number(label="Seed", value=0, precision=0)
                compare_button = gr.Button("Compare", variant="primary")
                gr.Examples([[p] for p in EXAMPLES["shapes-t2i"] + EXAMPLES["shapes-t2v"]], inputs=[prompt])
            with gr.Column(scale=2):
                with gr.Row():
                    fp_out = gr.Image(label="Full precision", height=320)
                    q_out = gr.Image(label="Quantized", height=320)
                with gr.Row():
                    fp_info = gr.Markdown()
                    q_info = gr.Markdown()
    with gr.Tab("Quantize"):
        with gr.Row():
            with gr.Column():
                method = gr.Dropdown(list(METHODS), value="trdq", label="Method (TR-DQ or a baseline)")
                bits = gr.Dropdown(BITS, value="w4a8", label="Bits (weights/activations)")
                groups = gr.Slider(1, 20, value=4, step=1, label="Time groups (TR-DQ, ViDiT-Q)")
                rotation = gr.Radio(list(ROTATIONS), value="duquant", label="Rotation (TR-DQ)")
                block_size = gr.Slider(8, 192, value=64, step=8, label="Rotation block size")
            with gr.Column():
                search_alpha = gr.Checkbox(value=True, label="Search alpha_g per time group")
                alpha_sliders = [gr.Slider(0.0, 1.0, value=0.5, step=0.05, label=f"alpha, group {g}")
                                 for g in range(MAX_GROUPS)]
            with gr.Column():
                cfg_split = gr.Checkbox(value=False, label="CFG split: quantize the branches apart")
                uncond_bits = gr.Dropdown(["same"] + BITS, value="same", label="Unconditional branch bits")
                share = gr.Dropdown(SHARING, value="off", label="Attention-Sharing: layers (N), cosine threshold, or share of uncond score compute (P%)")
                execution = gr.Radio(list(EXECUTIONS), value="simulated", label="Execution")
                quantize_button = gr.Button("Quantize", variant="primary")
                quantize_info = gr.Markdown()
    config_inputs = [method, bits, groups, rotation, block_size, search_alpha, cfg_split, uncond_bits]
    with gr.Tab("Distributions"):
        with gr.Row():
            list_button = gr.Button("List layers")
            layer = gr.Dropdown([], label="Layer", allow_custom_value=True)
            group = gr.Slider(0, 3, value=0, step=1, label="Time group")
            show_button = gr.Button("Show", variant="primary")
        with gr.Row():
            hist_plot = gr.Plot(label="Histogram")
            surface_plot = gr.Plot(label="|x| per token and channel")
        with gr.Row():
            channel_plot = gr.Plot(label="Per-channel abs-max of the input")
            weight_plot = gr.Plot(label="Per-input-channel abs-max of the weight")
        stats_table = gr.Dataframe(label="Statistics per time group", wrap=True)
    with gr.Tab("Trajectory"):
        trajectory_button = gr.Button("Measure", variant="primary")
        curve_plot = gr.Plot(label="Noise-prediction SQNR vs FP")
        similarity_plot = gr.Plot(label="Cond/uncond attention similarity")
    with gr.Tab("Benchmark"):
        files = benchmark_files()
        bench_file = gr.Dropdown(files, value=files[0] if files else None, label="Report")
        bench_button = gr.Button("Show", variant="primary")
        bench_md = gr.Markdown()
        bench_plot = gr.Plot()

    model.change(examples_for, inputs=model, outputs=prompt)
    quantize_button.click(quantize, inputs=[model, *config_inputs, *alpha_sliders], outputs=quantize_info,
                          api_name="quantize")
    compare_button.click(compare, inputs=[model, prompt, seed, steps, guidance, *config_inputs, share, execution,
                                          *alpha_sliders],
                         outputs=[fp_out, fp_info, q_out, q_info], api_name="compare")
    list_button.click(layer_choices, inputs=[model, *config_inputs, *alpha_sliders], outputs=[layer, group],
                      api_name="layers")
    show_button.click(distributions, inputs=[model, layer, group, steps, guidance, *config_inputs, *alpha_sliders],
                      outputs=[hist_plot, surface_plot, channel_plot, weight_plot, stats_table],
                      api_name="distributions")
    trajectory_button.click(trajectory, inputs=[model, steps, guidance, *config_inputs, *alpha_sliders],
                            outputs=[curve_plot, similarity_plot], api_name="trajectory")
    bench_button.click(benchmark, inputs=bench_file, outputs=[bench_md, bench_plot], api_name="benchmark")

demo.queue(default_concurrency_limit=1)

if __name__ == "__main__":
    demo.launch()
