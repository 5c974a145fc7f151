"""trdq: TR-DQ (time-rotation) post-training quantization for diffusion transformers.

Public names so far: the model loader and text-to-image sampling. The quantization verbs
(``quantize``, ``save``, ``load``) arrive with the engine.
"""

from trdq.generate import generate_images
from trdq.models.loader import LoadedModel, ModelSettings, load_model

__all__ = ["LoadedModel", "ModelSettings", "generate_images", "load_model"]
