"""A small CNN that reads size, colour, shape and position off a shapes-world image.

It is the eye of the evaluator: ``adherence`` compares its readings with the prompt, and
``shapes_fd`` measures distances in its penultimate feature space. It is trained on rendered
images only (``python -m trdq.demo.train.detector``) and shipped under ``assets/detector``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trdq.demo import shapes

DEFAULT_PATH = Path(__file__).resolve().parents[3] / "assets" / "detector"
FEATURE_DIM = 256


class ShapesDetector(nn.Module):
    """Four-headed classifier over 64x64 RGB images.

    Heads follow :data:`trdq.demo.shapes.ATTRIBUTES` (size, color, shape, position).
    """

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 3 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):  # 64 -> 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.backbone = nn.Sequential(*layers, nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(chans[-1] * 16, FEATURE_DIM), nn.SiLU())
        self.heads = nn.ModuleDict(
            {name: nn.Linear(FEATURE_DIM, len(values)) for name, values in shapes.ATTRIBUTES.items()}
        )
        self.width = width

    @staticmethod
    def preprocess(images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, 64, 64) in [-1, 1], resized if needed."""
        x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if x.shape[-1] != shapes.IMAGE_SIZE or x.shape[-2] != shapes.IMAGE_SIZE:
            x = nn.functional.interpolate(x, size=(shapes.IMAGE_SIZE,) * 2, mode="area")
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 64, 64) -> (N, FEATURE_DIM)."""
        return self.embed(self.backbone(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, 64, 64) -> logits per attribute, each (N, num_classes)."""
        f = self.features(x)
        return {name: head(f) for name, head in self.heads.items()}

    @torch.no_grad()
    def read(self, images: np.ndarray, batch_size: int = 256) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Predicted class per attribute and the features of uint8 (N, H, W, 3) images."""
        self.eval()
        preds: dict[str, list] = {name: [] for name in shapes.ATTRIBUTES}
        feats = []
        for lo in range(0, len(images), batch_size):
            x = self.preprocess(images[lo:lo + batch_size])
            f = self.features(x)
            feats.append(f)
            for name, head in self.heads.items():
                preds[name].append(head(f).argmax(-1))
        return ({k: torch.cat(v).numpy() for k, v in preds.items()}, torch.cat(feats).numpy())

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps({"width": self.width}))


def load_detector(path: str | Path = DEFAULT_PATH) -> ShapesDetector:
    """Load the shipped detector (or one saved elsewhere with :meth:`ShapesDetector.save`)."""
    path = Path(path)
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"no shapes detector at {path}; train one with `python -m trdq.demo.train.detector --out {path}`"
        )
    model = ShapesDetector(**json.loads((path / "config.json").read_text()))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.eval()
