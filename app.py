"""trdq app: the full-precision model and its TR-DQ (or baseline) quantization side by side.

Run ``python app.py`` and open the printed address. Both images come from the same seed; the
quantized one is labelled with how it ran: "simulated" (fake quantization in floating point) or
"real integer" (int8 GEMMs, packed 4-bit weights).
Quantized models are calibrated once per configuration and cached for the session.
"""

from __future__ import annotations

import functools
import time

import gradio as gr
import numpy as np

import trdq
from trdq import shapes
from trdq.config import METHODS, ROTATIONS, parse_bits
from trdq.eval.metrics import psnr, ssim

MODEL = "shapes-t2i"
BITS = ["w8a8", "w6a6", "w4a8", "w4a4"]
CALIBRATION_PROMPTS = [s.caption for s in shapes.sample_scenes(8, seed=2024)]
EXAMPLES = [
    ["a large red circle in the center", 0],
    ["a small blue square on the left", 1],
    ["a large yellow star at the top", 2],
    ["a small purple triangle at the bottom", 3],
    ["a large orange square on the right", 4],
]


@functools.lru_cache(maxsize=1)
def fp_model() -> trdq.LoadedModel:
    """The full-precision embedded model, loaded once per process."""
    return trdq.load_model(MODEL)


@functools.lru_cache(maxsize=8)
def quantized_model(config: trdq.QuantConfig) -> trdq.LoadedModel:
    """One calibrated model per configuration (calibration runs the FP model on 8 prompts)."""
    return trdq.quantize(fp_model(), config, CALIBRATION_PROMPTS)


EXECUTIONS = {"simulated": None, "real integer (per-group weights)": "per-group",
              "real integer (one shared weight copy)": "shared"}


@functools.lru_cache(maxsize=8)
def executed_model(config: trdq.QuantConfig, execution: str) -> trdq.LoadedModel:
    """The quantized model of ``config`` run as ``execution`` (a key of :data:`EXECUTIONS`)."""
    deployment = EXECUTIONS[execution]
    simulated = quantized_model(config)
    return simulated if deployment is None else trdq.realize(simulated, deployment, base=fp_model())


def make_config(method: str, bits: str, groups: float, rotation: str, search_alpha: bool,
                alpha: float) -> trdq.QuantConfig:
    """UI values -> a validated config; invalid values become a UI error that says what to change."""
    try:
        w_bits, a_bits = parse_bits(bits)
        return trdq.QuantConfig(method=method, w_bits=w_bits, a_bits=a_bits,
                                time_groups=trdq.TimeGroups(int(groups)), rotation=rotation,
                                alpha=None if search_alpha else float(alpha), block_size=64)
    except ValueError as err:
        raise gr.Error(str(err)) from None


def _sample(model: trdq.LoadedModel, prompt: str, seed: int, steps: int, guidance: float) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    image = trdq.generate(model, [prompt], [seed], steps=steps, guidance=guidance)[0]
    return image, time.perf_counter() - t0


def compare(prompt: str, seed: float, steps: float, guidance: float, method: str, bits: str, groups: float,
            rotation: str, search_alpha: bool, alpha: float, execution: str = "simulated",
            progress=gr.Progress()) -> tuple[np.ndarray, str, np.ndarray, str]:
    """Handler of the Compare button: FP and quantized images from one seed, with facts about each."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise gr.Error("Type a prompt first, e.g. 'a small red circle on the left'.")
    if not 1 <= int(steps) <= 100:
        raise gr.Error(f"Steps must be between 1 and 100, got {steps}.")
    if int(groups) > int(steps):
        raise gr.Error(f"{int(groups)} time groups need at least as many sampling steps; raise the steps "
                       "or lower the groups.")
    if unknown := shapes.unknown_words(prompt):
        gr.Warning(f"The model never saw these words: {', '.join(unknown)}. It knows: {shapes.GRAMMAR}.")
    config = make_config(method, bits, groups, rotation, search_alpha, alpha)
    if execution not in EXECUTIONS:
        raise gr.Error(f"Unknown execution {execution!r}; choose one of: {', '.join(EXECUTIONS)}.")
    seed, steps = int(seed), int(steps)
    progress(0.05, desc="full precision")
    fp_image, fp_seconds = _sample(fp_model(), prompt, seed, steps, guidance)
    progress(0.35, desc=f"calibrating {method} {bits} (once per setting)")
    try:
        qmodel = executed_model(config, execution)
    except ValueError as err:
        raise gr.Error(str(err)) from None
    progress(0.75, desc=f"{method} {bits}")
    q_image, q_seconds = _sample(qmodel, prompt, seed, steps, guidance)
    fp_info = f"**full precision (fp32)** · {fp_seconds:.2f} s · {steps} steps · seed {seed}"
    db = float(np.minimum(psnr(q_image[None], fp_image[None])[0], 100.0))
    q_info = (f"**{method} {bits.upper()} · {qmodel.quant.execution}** · {q_seconds:.2f} s · "
              f"PSNR vs FP {db:.2f} dB · SSIM vs FP {float(ssim(q_image[None], fp_image[None])[0]):.3f}")
    return fp_image, fp_info, q_image, q_info


with gr.Blocks(title="trdq: time-rotation diffusion quantization") as demo:
    gr.Markdown(
        "# trdq\nTR-DQ post-training quantization for diffusion transformers, on the embedded "
        f"**{MODEL}** PixArt-alpha pipeline. Prompts follow `{shapes.GRAMMAR}`. Quantized models run "
        "**simulated** (fake quantization in floating point: the method's numerics) or as **real "
        "integer** code (int8 GEMMs, 4-bit weights packed two per byte)."
    )
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0][0])
            seed = gr.Number(label="Seed", value=0, precision=0)
            steps = gr.Slider(1, 50, value=20, step=1, label="Sampling steps (DDIM)")
            guidance = gr.Slider(1.0, 10.0, value=4.5, step=0.5, label="Guidance scale")
            with gr.Accordion("Quantization", open=True):
                method = gr.Dropdown(list(METHODS), value="trdq", label="Method")
                bits = gr.Dropdown(BITS, value="w4a8", label="Bits (weights/activations)")
                groups = gr.Slider(1, 20, value=4, step=1, label="Time groups (TR-DQ, ViDiT-Q)")
                rotation = gr.Radio(list(ROTATIONS), value="duquant", label="Rotation (TR-DQ)")
                search_alpha = gr.Checkbox(value=True, label="Search alpha per time group")
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Fixed alpha (when not searched)")
                execution = gr.Radio(list(EXECUTIONS), value="simulated", label="Execution")
            button = gr.Button("Compare", variant="primary")
        with gr.Column(scale=2):
            with gr.Row():
                fp_image = gr.Image(label="Full precision", type="numpy", height=320)
                q_image = gr.Image(label="Quantized", type="numpy", height=320)
            with gr.Row():
                fp_info = gr.Markdown()
                q_info = gr.Markdown()
    gr.Examples(EXAMPLES, inputs=[prompt, seed])
    button.click(compare, inputs=[prompt, seed, steps, guidance, method, bits, groups, rotation, search_alpha, alpha,
                                  execution], outputs=[fp_image, fp_info, q_image, q_info], api_name="compare")

demo.queue(default_concurrency_limit=1)

if __name__ == "__main__":
    demo.launch()
