"""Train the shapes-world detector on rendered images (seeded).

    python -m trdq.demo.train.detector --out assets/detector

Training images are degraded at random (blur, noise, contrast, background tint) so that the
detector reads generated images, which are never as crisp as renders; it is checked on clean,
freshly rendered images with a seed it never trained on.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trdq.demo import shapes
from trdq.demo.eval.detector import ShapesDetector

log = logging.getLogger(__name__)


def labelled_batch(size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    scenes = [shapes.all_scenes()[i] for i in rng.integers(0, 240, size)]
    images = np.stack([np.asarray(shapes.render(s, rng)) for s in scenes])
    labels = {name: torch.tensor([s.labels()[name] for s in scenes]) for name in shapes.ATTRIBUTES}
    return images, labels


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random blur, contrast, tint and noise on a (N, 3, H, W) batch in [-1, 1]."""
    n = len(x)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    w = torch.rand(n, 1, 1, 1, generator=gen)
    x = torch.lerp(x, blur, w * (torch.rand(n, 1, 1, 1, generator=gen) < 0.5))
    x = x * (0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen))
    x = x + 0.08 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
    return x + 0.06 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)


def accuracy(model: ShapesDetector, num: int, seed: int) -> dict[str, float]:
    """Per-attribute and all-attribute accuracy on ``num`` clean renders."""
    images, labels = labelled_batch(num, np.random.default_rng(seed))
    preds, _ = model.read(images)
    hits = {name: preds[name] == labels[name].numpy() for name in shapes.ATTRIBUTES}
    out = {name: float(h.mean()) for name, h in hits.items()}
    out["all"] = float(np.logical_and.reduce(list(hits.values())).mean())
    return out


def train(out: Path, steps: int, batch_size: int, lr: float, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    model = ShapesDetector()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for step in range(1, steps + 1):
        images, labels = labelled_batch(batch_size, rng)
        logits = model(degrade(ShapesDetector.preprocess(images), gen))
        loss = sum(F.cross_entropy(logits[k], labels[k]) for k in shapes.ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            log.info("step %d loss %.4f", step, loss.item())
    acc = accuracy(model, 2000, seed=seed + 12345)
    log.info("clean-render accuracy: %s", acc)
    model.save(out)
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("assets/detector"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args.out, args.steps, args.batch_size, args.lr, args.seed)


if __name__ == "__main__":
    main()
