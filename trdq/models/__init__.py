"""Model loading and, per architecture family, the adapters the quantization engine uses."""

from trdq.models.loader import EMBEDDED, LoadedModel, ModelSettings, load_model

__all__ = ["EMBEDDED", "LoadedModel", "ModelSettings", "load_model"]
