"""trdq app: generate with the embedded full-precision model.

Run ``python app.py`` and open the printed address. This first version shows the full-precision
(FP32) shapes-t2i pipeline; quantized models join it side by side as the engine lands.
"""

from __future__ import annotations

import functools
import time

import gradio as gr
import numpy as np

from trdq import shapes
from trdq.generate import generate_images
from trdq.models import LoadedModel, load_model

EXAMPLES = [
    ["a large red circle in the center", 0],
    ["a small blue square on the left", 1],
    ["a large yellow star at the top", 2],
    ["a small purple triangle at the bottom", 3],
    ["a large orange square on the right", 4],
]


@functools.lru_cache(maxsize=2)
def get_model(name: str) -> LoadedModel:
    """Load a model once per process; later calls reuse it."""
    return load_model(name)


def generate_fp(prompt: str, seed: float, steps: float, guidance: float,
                progress=gr.Progress()) -> tuple[np.ndarray, str]:
    """Handler of the Generate button: one FP32 image and a line of facts about it."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise gr.Error("Type a prompt first, e.g. 'a small red circle on the left'.")
    if not 1 <= int(steps) <= 100:
        raise gr.Error(f"Steps must be between 1 and 100, got {steps}.")
    unknown = shapes.unknown_words(prompt)
    if unknown:
        gr.Warning(f"The model never saw these words: {', '.join(unknown)}. It knows: {shapes.GRAMMAR}.")
    model = get_model("shapes-t2i")
    total = int(steps)
    progress(0, desc="sampling")
    t0 = time.perf_counter()
    image = generate_images(model, [prompt], [int(seed)], steps=total, guidance=float(guidance))[0]
    seconds = time.perf_counter() - t0
    info = f"**full precision (fp32)** · {total} steps · guidance {guidance:g} · seed {int(seed)} · {seconds:.2f} s on CPU"
    return image, info


with gr.Blocks(title="trdq: time-rotation diffusion quantization") as demo:
    gr.Markdown(
        "# trdq\nTR-DQ post-training quantization for diffusion transformers. "
        "This page runs the embedded **shapes-t2i** PixArt-alpha pipeline in full precision; "
        f"prompts follow `{shapes.GRAMMAR}`."
    )
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0][0])
            seed = gr.Number(label="Seed", value=0, precision=0)
            steps = gr.Slider(1, 50, value=20, step=1, label="Sampling steps (DDIM)")
            guidance = gr.Slider(1.0, 10.0, value=4.5, step=0.5, label="Guidance scale")
            button = gr.Button("Generate", variant="primary")
        with gr.Column():
            image = gr.Image(label="Full precision", type="numpy", height=320)
            info = gr.Markdown()
    gr.Examples(EXAMPLES, inputs=[prompt, seed])
    button.click(generate_fp, inputs=[prompt, seed, steps, guidance], outputs=[image, info],
                 api_name="generate")

demo.queue(default_concurrency_limit=1)

if __name__ == "__main__":
    demo.launch()
