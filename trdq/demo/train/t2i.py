"""Train the embedded shapes-t2i PixArt-alpha pipeline (seeded, resumable).

    python -m trdq.demo.train.t2i --vae runs/vae/vae --steps 9000 --stop-after 8000 --out runs/t2i --export assets/shapes-t2i

The VAE is frozen (train it first with ``python -m trdq.demo.train.vae``); the PixArt transformer and
the small T5 text encoder are trained together on epsilon prediction with 10% caption dropout (for
classifier-free guidance), AdamW with warm-up and cosine decay, and an EMA of both. Latents come
from a pool of freshly rendered scenes, rebuilt at every (re)start and refreshed as training goes.
Every ``--save-every`` steps the resume state goes to ``OUT/state.pt``; every ``--export-every``
steps the EMA weights are saved as a full diffusers pipeline to ``--export``. On a machine without
``OUT/state.pt``, ``--init-from assets/shapes-t2i --init-step N`` continues from the shipped weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, PixArtAlphaPipeline

from trdq.demo import shapes
from trdq.demo.train import components
from trdq.demo.train.state import load_state, save_state
from trdq.models.loader import SETTINGS_FILE

log = logging.getLogger(__name__)

NO_CONDITIONS = {"resolution": None, "aspect_ratio": None}


class LatentPool:
    """Posterior means and stds of rendered scenes; a batch samples from the posteriors."""

    def __init__(self, vae: AutoencoderKL, size: int, seed: int):
        self.vae, self.seed = vae, seed
        self.labels = torch.zeros(size, dtype=torch.long)
        self.mean = torch.zeros(size, components.LATENT_CHANNELS, components.LATENT_SIZE, components.LATENT_SIZE)
        self.std = torch.zeros_like(self.mean)
        self.refresh(0, size, round_=0)

    @torch.no_grad()
    def refresh(self, start: int, count: int, round_: int, chunk: int = 256) -> None:
        """Re-render entries [start, start + count) with jitter drawn from (seed, round_)."""
        rng = np.random.default_rng([self.seed, round_, start])
        scenes = shapes.all_scenes()
        for lo in range(start, start + count, chunk):
            hi = min(lo + chunk, start + count)
            idx = rng.integers(0, len(scenes), hi - lo)
            images = np.stack([np.asarray(shapes.render(scenes[i], rng)) for i in idx])
            dist = self.vae.encode(components.images_to_tensor(images)).latent_dist
            self.labels[lo:hi] = torch.as_tensor(idx)
            self.mean[lo:hi], self.std[lo:hi] = dist.mean, dist.std

    def sample(self, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.randint(0, len(self.labels), (size,), generator=gen)
        z = self.mean[i] + self.std[i] * torch.randn(self.mean[i].shape, generator=gen)
        return z * self.vae.config.scaling_factor, self.labels[i]


class Captions:
    """Token ids of every caption of the grammar and of the empty (unconditional) caption."""

    def __init__(self, tokenizer):
        texts = [s.caption for s in shapes.all_scenes()] + [""]
        enc = tokenizer(texts, padding="max_length", max_length=components.MAX_TOKENS,
                        truncation=True, return_tensors="pt")
        self.ids, self.mask = enc.input_ids, enc.attention_mask
        self.null = len(texts) - 1

    def batch(self, labels: torch.Tensor, drop: float, gen: torch.Generator):
        dropped = torch.rand(len(labels), generator=gen) < drop
        labels = torch.where(dropped, torch.full_like(labels, self.null), labels)
        return self.ids[labels], self.mask[labels]


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


def update(loss: torch.Tensor, opt: torch.optim.Optimizer, model: torch.nn.Module, ema: torch.nn.Module,
           step: int, ema_decay: float) -> None:
    """One optimizer step on ``loss`` (gradients clipped at norm 1), then the EMA, whose decay
    warms up as ``(1 + step) / (10 + step)`` until it reaches ``ema_decay``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))


def save_training(path: Path, model, ema, opt, step: int, seconds: float) -> None:
    """The resume state: weights, EMA, optimizer, step and training seconds."""
    save_state(path, {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                      "step": step, "seconds": seconds})


def export(path: Path, tokenizer, text_encoder, transformer, vae, training: dict) -> None:
    """Save the EMA weights as a complete PixArtAlphaPipeline (safetensors)."""
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                               transformer=transformer, scheduler=components.build_scheduler())
    pipe.save_pretrained(path, safe_serialization=True)
    settings = {"world": "shapes", "max_sequence_length": components.MAX_TOKENS, "steps": 20, "guidance": 4.5,
                "training": training}
    (path / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    log.info("exported pipeline to %s", path)


def train(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    vae = AutoencoderKL.from_pretrained(args.vae).eval().requires_grad_(False)
    tokenizer = components.build_tokenizer()
    model = torch.nn.ModuleDict({
        "transformer": components.build_transformer(),
        "text_encoder": components.build_text_encoder(len(tokenizer)),
    })
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    noise = DDPMScheduler.from_config(components.build_scheduler().config)
    step, seconds, state_path = 0, 0.0, args.out / "state.pt"
    if state_path.exists():
        state = load_state(state_path, required=("model", "ema", "opt", "step"))
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        seconds = state.get("seconds", 0.0)
        log.info("resumed at step %d", step)
    elif args.init_from is not None:  # e.g. the committed pipeline on a fresh machine: new optimizer
        init = PixArtAlphaPipeline.from_pretrained(args.init_from)
        for part in (model, ema):
            part["transformer"].load_state_dict(init.transformer.state_dict())
            part["text_encoder"].load_state_dict(init.text_encoder.state_dict())
        step = args.init_step
        log.info("initialised from %s at step %d", args.init_from, step)
    gen = torch.Generator().manual_seed(args.seed * 1000003 + step)
    pool = LatentPool(vae, args.pool_size, args.seed + step)
    captions = Captions(tokenizer)
    alphas = noise.alphas_cumprod
    t0, losses, last = time.time(), [], time.time()
    last_step = min(args.steps, args.stop_after or args.steps)
    while step < last_step:
        warm = min(1.0, (step + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        z0, labels = pool.sample(args.batch_size, gen)
        ids, mask = captions.batch(labels, args.caption_dropout, gen)
        t = torch.randint(0, noise.config.num_train_timesteps, (len(z0),), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            text = model["text_encoder"](input_ids=ids, attention_mask=mask).last_hidden_state
            pred = model["transformer"](zt, encoder_hidden_states=text, timestep=t,
                                        encoder_attention_mask=mask, added_cond_kwargs=NO_CONDITIONS,
                                        return_dict=False)[0]
        loss = F.mse_loss(pred.float(), eps)
        step += 1
        update(loss, opt, model, ema, step, args.ema)
        seconds, last = seconds + time.time() - last, time.time()
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("step %d loss %.4f lr %.2e  %.2f s/step", step, np.mean(losses),
                     opt.param_groups[0]["lr"], (time.time() - t0) / 50)
            t0, losses = time.time(), []
        if step % args.refresh_every == 0:  # keep the jitter fresh: replace a quarter of the pool
            quarter = args.pool_size // 4
            pool.refresh((step // args.refresh_every) % 4 * quarter, quarter, round_=step)
        if step % args.save_every == 0 or step == last_step:
            save_training(state_path, model, ema, opt, step, seconds)
        if step % args.export_every == 0 or step == last_step:
            export(args.export, tokenizer, ema["text_encoder"], ema["transformer"], vae,
                   {"steps": step, "batch_size": args.batch_size, "train_seconds": round(seconds)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, default=Path("runs/vae/vae"))
    parser.add_argument("--out", type=Path, default=Path("runs/t2i"))
    parser.add_argument("--export", type=Path, default=Path("assets/shapes-t2i"))
    parser.add_argument("--steps", type=int, default=9000, help="length of the learning-rate schedule")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end (save and export) at this step, before the schedule ends")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--pool-size", type=int, default=16384)
    parser.add_argument("--refresh-every", type=int, default=1000)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast for the forward/backward matmuls (about 2x faster on CPU)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="without OUT/state.pt: start from this exported pipeline's (EMA) weights")
    parser.add_argument("--init-step", type=int, default=0, help="step count to continue from with --init-from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--export-every", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args)


if __name__ == "__main__":
    main()
