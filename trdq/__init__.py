"""trdq: TR-DQ (time-rotation) post-training quantization for diffusion transformers.

    import trdq
    fp = trdq.load_model("shapes-t2i")
    q = trdq.quantize(fp, trdq.QuantConfig(method="trdq", w_bits=4, a_bits=8,
                                           time_groups=trdq.TimeGroups(4)), prompts)
    trdq.save(q, "out/q"); q2 = trdq.load("out/q", base=fp)

``trdq.quantize`` gives a simulated (fake quant) model; ``trdq.realize`` turns it into real integer
execution (int8 GEMMs, packed 4-bit weights). Results say which.
"""

from trdq.api import calibrate, convert, prepare, quantize, realize
from trdq.config import QuantConfig, TimeGroups
from trdq.models.adapters import UnsupportedArchitectureError
from trdq.models.loader import LoadedModel, ModelSettings, load_model
from trdq.sampling import generate
from trdq.serialization import load, save

__all__ = [
    "LoadedModel", "ModelSettings", "QuantConfig", "TimeGroups", "UnsupportedArchitectureError", "calibrate", "convert", "generate",
    "load", "load_model", "prepare", "quantize", "realize", "save",
]
