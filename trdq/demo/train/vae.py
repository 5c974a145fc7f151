"""Train the shapes-t2i autoencoder on freshly rendered shapes (seeded, resumable).

    python -m trdq.demo.train.vae --steps 1000 --batch-size 24 --out runs/vae

Writes ``OUT/state.pt`` (resume state) every ``--save-every`` steps and ``OUT/vae`` (diffusers
``save_pretrained``) at the end, with ``scaling_factor`` set to 1 / std of the latents.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trdq.demo import shapes
from trdq.demo.train.components import build_vae, images_to_tensor
from trdq.demo.train.state import load_state, save_state

log = logging.getLogger(__name__)


def batch(step: int, size: int, seed: int) -> torch.Tensor:
    """A batch of rendered scenes that depends only on (seed, step): resumes replay exactly."""
    rng = np.random.default_rng([seed, step])
    scenes = [shapes.all_scenes()[i] for i in rng.integers(0, 240, size)]
    return images_to_tensor(np.stack([np.asarray(shapes.render(s, rng)) for s in scenes]))


def loss_fn(vae, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample
    rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
    return rec + kl_weight * posterior.kl().mean(), rec


def train(out: Path, steps: int, batch_size: int, lr: float, kl_weight: float, seed: int,
          save_every: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    step = 0
    state_path = out / "state.pt"
    if state_path.exists():
        state = load_state(state_path)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log.info("resumed at step %d", step)
    t0 = time.time()
    while step < steps:
        for group in opt.param_groups:  # cosine decay after a short warm-up
            group["lr"] = lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss, rec = loss_fn(vae, batch(step, batch_size, seed), kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            log.info("step %d rec %.5f  %.2f s/step", step, rec.item(), (time.time() - t0) / 50)
            t0 = time.time()
        if step % save_every == 0 or step == steps:
            save_state(state_path, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step})
    finalize(vae, out / "vae", seed)


@torch.no_grad()
def finalize(vae, path: Path, seed: int) -> None:
    """Set ``scaling_factor`` from the latent std on fresh renders and save the VAE."""
    vae.eval()
    x = torch.cat([batch(10**6 + i, 64, seed) for i in range(8)])
    latents = vae.encode(x).latent_dist.sample()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    psnr = 10 * torch.log10(4.0 / F.mse_loss(vae.decode(latents).sample.clamp(-1, 1), x))
    log.info("latent std %.4f, reconstruction PSNR %.2f dB", latents.std().item(), psnr.item())
    vae.save_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/vae"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=250)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args.out, args.steps, args.batch_size, args.lr, args.kl_weight, args.seed, args.save_every)


if __name__ == "__main__":
    main()
