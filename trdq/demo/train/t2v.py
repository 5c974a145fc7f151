"""Train the embedded shapes-t2v Latte pipeline on moving shapes (seeded, resumable).

    python -m trdq.demo.train.t2v --init-image assets/shapes-t2i --steps 6000 --out runs/t2v --export assets/shapes-t2v

Like Latte itself, which starts from PixArt-alpha, the video transformer starts from the image
model: its spatial blocks, embedders and output layer are the shapes-t2i transformer's, the text
encoder is the shapes-t2i one (rows for the new words ``moving``, ``up``, ``down`` are fresh), and
the temporal blocks start as the identity (zeroed output projections). The image model's frozen
VAE encodes every frame. Training is epsilon prediction on clips from :mod:`trdq.demo.motion` with 10%
caption dropout, AdamW with warm-up and cosine decay (the new temporal blocks at a higher rate),
and an EMA, as for the image model; half of each batch draws its timestep from the noisier half of
the schedule, where the object's path across frames is decided.

Text conditioning is :func:`trdq.sampling.fixed_layout` at ``MAX_TOKENS``, as sampling builds it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, LattePipeline, PixArtAlphaPipeline

from trdq.demo import motion
from trdq.demo.train import components
from trdq.demo.train.state import load_state
from trdq.demo.train.t2i import save_training, update
from trdq.models.loader import SETTINGS_FILE
from trdq.sampling import fixed_layout

log = logging.getLogger(__name__)


def render_chunk(seed: int, round_: int, start: int, count: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene indices and uint8 clips for pool entries [start, start + count), drawn from (seed, round_, start)."""
    rng = np.random.default_rng([seed, round_, start])
    scenes = motion.all_scenes()
    idx = rng.integers(0, len(scenes), count)
    return idx, np.stack([motion.render_clip(scenes[i], rng, frames) for i in idx])


class ClipPool:
    """Per-frame posterior means and stds of rendered clips (kept on the CPU); a batch samples from
    the posteriors. ``workers`` > 1 renders chunks in that many processes (same clips as one)."""

    def __init__(self, vae: AutoencoderKL, size: int, frames: int, seed: int, workers: int = 1, chunk: int = 32):
        self.vae, self.seed, self.frames, self.chunk = vae, seed, frames, chunk
        self.executor = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                         if workers > 1 else None)
        self.labels = torch.zeros(size, dtype=torch.long)
        shape = (size, components.LATENT_CHANNELS, frames, components.LATENT_SIZE, components.LATENT_SIZE)
        self.mean = torch.zeros(shape)
        self.std = torch.zeros(shape)
        self.refresh(0, size, round_=0)

    @torch.no_grad()
    def refresh(self, start: int, count: int, round_: int) -> None:
        """Re-render entries [start, start + count) with jitter drawn from (seed, round_)."""
        starts = range(start, start + count, self.chunk)
        jobs = [(self.seed, round_, lo, min(self.chunk, start + count - lo), self.frames) for lo in starts]
        chunks = self.executor.map(render_chunk, *zip(*jobs)) if self.executor else (render_chunk(*j) for j in jobs)
        device = next(self.vae.parameters()).device
        for lo, (idx, clips) in zip(starts, chunks):
            hi = lo + len(idx)
            frames = components.images_to_tensor(clips.reshape(-1, *clips.shape[2:])).to(device)
            dist = self.vae.encode(frames).latent_dist
            to_clips = lambda x: x.reshape(hi - lo, self.frames, *x.shape[1:]).transpose(1, 2).cpu()  # noqa: E731
            self.labels[lo:hi] = torch.as_tensor(idx)
            self.mean[lo:hi], self.std[lo:hi] = to_clips(dist.mean), to_clips(dist.std)

    def sample(self, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.randint(0, len(self.labels), (size,), generator=gen)
        z = self.mean[i] + self.std[i] * torch.randn(self.mean[i].shape, generator=gen)
        return z * self.vae.config.scaling_factor, self.labels[i]


def init_from_image_model(model: torch.nn.ModuleDict, image_model: Path, tokenizer) -> None:
    """Copy the shapes-t2i weights into the video transformer and text encoder (see module doc)."""
    image = PixArtAlphaPipeline.from_pretrained(image_model)
    spatial = image.transformer.state_dict()
    video = model["transformer"]
    channels = components.LATENT_CHANNELS
    with torch.no_grad():
        for name in ("proj_out.weight", "proj_out.bias"):  # rows are (patch position, channel)
            src = spatial.pop(name)
            dst = torch.zeros_like(video.state_dict()[name])
            dst.view(-1, 2 * channels, *src.shape[1:])[:, :channels] = src.view(-1, channels, *src.shape[1:])
            spatial[name] = dst
        missing, unexpected = video.load_state_dict(spatial, strict=False)
        assert not unexpected and all(k.startswith("temporal_transformer_blocks.") for k in missing)
        for block in video.temporal_transformer_blocks:  # start as the identity
            for layer in (block.attn1.to_out[0], block.ff.net[2]):
                layer.weight.zero_()
                layer.bias.zero_()
        old_vocab, new_vocab = image.tokenizer.get_vocab(), tokenizer.get_vocab()
        text = image.text_encoder.state_dict()
        old_rows = text.pop("shared.weight")
        new_rows = model["text_encoder"].shared.weight.detach().clone()
        for word, i in new_vocab.items():
            if word in old_vocab:
                new_rows[i] = old_rows[old_vocab[word]]
        text = {k: v for k, v in text.items() if k != "encoder.embed_tokens.weight"}
        model["text_encoder"].load_state_dict(text, strict=False)
        model["text_encoder"].shared.weight.copy_(new_rows)
    log.info("initialised from the image model %s (%d of %d words known)", image_model,
             sum(w in old_vocab for w in new_vocab), len(new_vocab))


def export(path: Path, tokenizer, text_encoder, transformer, vae, frames: int, training: dict) -> None:
    """Save the EMA weights as a complete LattePipeline (safetensors)."""
    pipe = LattePipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                         scheduler=components.build_scheduler())
    pipe.save_pretrained(path, safe_serialization=True)
    settings = {"world": "moving-shapes", "max_sequence_length": components.MAX_TOKENS, "steps": 20,
                "guidance": 4.5, "num_frames": frames, "training": training}
    (path / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    log.info("exported pipeline to %s", path)


def train(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    vae = AutoencoderKL.from_pretrained(args.init_image, subfolder="vae").eval().requires_grad_(False)
    vae_cpu, vae = vae, copy.deepcopy(vae).to(device)
    tokenizer = components.build_tokenizer(motion.VOCABULARY)
    model = torch.nn.ModuleDict({
        "transformer": components.build_latte_transformer(args.frames),
        "text_encoder": components.build_text_encoder(len(tokenizer)),
    })
    temporal = [p for n, p in model.named_parameters() if ".temporal_transformer_blocks." in f".{n}"]
    rest = [p for n, p in model.named_parameters() if ".temporal_transformer_blocks." not in f".{n}"]
    opt = torch.optim.AdamW([{"params": rest, "lr_mult": 1.0},
                             {"params": temporal, "lr_mult": args.temporal_lr_mult}],
                            lr=args.lr, weight_decay=0.01)
    noise = DDPMScheduler.from_config(components.build_scheduler().config)
    step, seconds, state_path, before = 0, 0.0, args.out / "state.pt", "shapes-t2i"
    if state_path.exists():
        state = load_state(state_path, required=("model", "ema", "opt", "step"))
        model.load_state_dict(state["model"])
        ema = copy.deepcopy(model).requires_grad_(False)
        ema.load_state_dict(state["ema"])
        if len(state["opt"]["param_groups"]) == len(opt.param_groups):
            opt.load_state_dict(state["opt"])
        else:  # saved by a version with one parameter group: keep the weights, restart the moments
            log.info("optimizer state has another layout; starting fresh moments")
        step, seconds = state["step"], state.get("seconds", 0.0)
        log.info("resumed at step %d", step)
    elif args.init_from is not None:  # the committed video pipeline on a fresh machine: new optimizer
        init = LattePipeline.from_pretrained(args.init_from)
        model["transformer"].load_state_dict(init.transformer.state_dict())
        model["text_encoder"].load_state_dict(init.text_encoder.state_dict())
        ema = copy.deepcopy(model).requires_grad_(False)
        step = args.init_step
        settings = json.loads((args.init_from / SETTINGS_FILE).read_text()) if (
            args.init_from / SETTINGS_FILE).exists() else {}
        before = {"from": str(args.init_from), **settings.get("training", {})}
        log.info("initialised from %s at step %d", args.init_from, step)
    else:
        init_from_image_model(model, args.init_image, tokenizer)
        ema = copy.deepcopy(model).requires_grad_(False)
    model.to(device), ema.to(device)
    for moments in opt.state.values():  # a resumed optimizer follows its parameters
        for key, value in moments.items():
            if torch.is_tensor(value) and key != "step":
                moments[key] = value.to(device)
    gen = torch.Generator().manual_seed(args.seed * 1000003 + step)
    pool = ClipPool(vae, args.pool_size, args.frames, args.seed + step, workers=args.workers)
    texts = [s.caption for s in motion.all_scenes()] + [""]
    enc = tokenizer(texts, padding="max_length", max_length=components.MAX_TOKENS, truncation=True,
                    return_tensors="pt")
    null = len(texts) - 1
    alphas = noise.alphas_cumprod
    input_ids, attention_mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    channels = components.LATENT_CHANNELS
    t0, losses, last = time.time(), [], time.time()
    last_step = min(args.steps, args.stop_after or args.steps)
    first_step, started, timed = step, time.time(), None
    while step < last_step:
        if args.time_budget and step == first_step + 10:  # after warm-up (kernels, allocator)
            timed = time.time()
        if args.time_budget and step == first_step + 60:  # fix the schedule to end inside the budget
            per_step = (time.time() - timed) / 50
            args.steps = last_step = step + int((args.time_budget - (time.time() - started)) / per_step)
            log.info("time budget %.0f s at %.3f s/step: the schedule ends at step %d (pass --steps %d "
                     "to repeat it)", args.time_budget, per_step, args.steps, args.steps)
        warm = min(1.0, (step + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = group["lr_mult"] * args.lr * warm * (
                0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        z0, labels = pool.sample(args.batch_size, gen)
        dropped = torch.rand(len(labels), generator=gen) < args.caption_dropout
        labels = torch.where(dropped, torch.full_like(labels, null), labels)
        t = torch.randint(0, noise.config.num_train_timesteps, (len(z0),), generator=gen)
        high = torch.rand(len(z0), generator=gen) < args.high_noise  # where layout and motion are decided
        t = torch.where(high, noise.config.num_train_timesteps // 2 + t // 2, t)
        eps = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1, 1)
        zt = (a.sqrt() * z0 + (1 - a).sqrt() * eps).to(device)
        eps, t, labels, dropped = eps.to(device), t.to(device), labels.to(device), dropped.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            text = fixed_layout(model["text_encoder"], input_ids[labels], attention_mask[labels], ~dropped)
            pred = model["transformer"](zt, encoder_hidden_states=text, timestep=t, return_dict=False)[0]
        loss = F.mse_loss(pred[:, :channels].float(), eps)
        step += 1
        update(loss, opt, model, ema, step, args.ema)
        seconds, last = seconds + time.time() - last, time.time()
        losses.append(loss.item())
        if step % 25 == 0:
            log.info("step %d loss %.4f lr %.2e  %.2f s/step", step, np.mean(losses),
                     opt.param_groups[0]["lr"], (time.time() - t0) / 25)
            t0, losses = time.time(), []
        if step % args.refresh_every == 0:  # keep the jitter fresh: replace a quarter of the pool
            quarter = args.pool_size // 4
            pool.refresh((step // args.refresh_every) % 4 * quarter, quarter, round_=step)
        if step % args.save_every == 0 or step == last_step:
            save_training(state_path, model, ema, opt, step, seconds)
        if step % args.export_every == 0 or step == last_step:
            weights = copy.deepcopy(ema).cpu()
            export(args.export, tokenizer, weights["text_encoder"], weights["transformer"], vae_cpu, args.frames,
                   {"steps": step, "batch_size": args.batch_size, "lr": args.lr, "train_seconds": round(seconds),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "init": before})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init-image", type=Path, default=Path("assets/shapes-t2i"),
                        help="the image pipeline whose VAE, text encoder and spatial blocks start the model")
    parser.add_argument("--out", type=Path, default=Path("runs/t2v"))
    parser.add_argument("--export", type=Path, default=Path("assets/shapes-t2v"))
    parser.add_argument("--frames", type=int, default=motion.NUM_FRAMES)
    parser.add_argument("--steps", type=int, default=6000, help="length of the learning-rate schedule")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end (save and export) at this step, before the schedule ends")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--temporal-lr-mult", type=float, default=3.0,
                        help="learning-rate multiplier of the temporal blocks (new, started at the identity)")
    parser.add_argument("--high-noise", type=float, default=0.5,
                        help="fraction of each batch with its timestep drawn from the noisier half, where "
                             "the object's path is decided")
    parser.add_argument("--pool-size", type=int, default=4096)
    parser.add_argument("--refresh-every", type=int, default=500)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast for the forward/backward matmuls (about 2x faster on CPU)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="without OUT/state.pt: start from this exported video pipeline's (EMA) weights")
    parser.add_argument("--init-step", type=int, default=0, help="step count to continue from with --init-from")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds: time steps 10 to 60, then set --steps so that training ends within this "
                             "time (logged, so that passing it repeats the schedule)")
    parser.add_argument("--device", default="cpu", help="where to train: cpu, cuda, cuda:1, ...")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes that render the clip pool (the clips do not depend on it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--export-every", type=int, default=500)
    args = parser.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device {args.device!r}: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch build or machine has no CUDA GPU; use --device cpu")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget is a number of seconds above 0, got {args.time_budget}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args)


if __name__ == "__main__":
    main()
