"""trdq: TR-DQ (time-rotation) post-training quantization for diffusion transformers.

    import trdq
    fp = trdq.load_model("shapes-t2i")
    q = trdq.quantize(fp, trdq.QuantConfig(method="trdq", w_bits=4, a_bits=8,
                                           time_groups=trdq.TimeGroups(4)), prompts)
    trdq.save_pretrained(q, "out/q")  # stand-alone: loads without the FP weights
    q2 = trdq.from_pretrained("out/q", execution="real integer")

``trdq.quantize`` gives a simulated (fake quant) model; ``trdq.realize`` turns it into real integer
execution (int8 GEMMs, packed 4-bit weights). Results say which.
"""

import logging

# With torchao installed (a benchmark peer), `import diffusers` imports it, and on a CPU-only
# torch that logs warnings about its CUDA kernels, its torch.compile enums and a layout diffusers
# 0.42 looks for; none of them concerns trdq, and they would greet every command and the app.
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)

from trdq.api import calibrate, calibrating, convert, prepare, quantize, realize  # noqa: E402
from trdq.config import QuantConfig, TimeGroups  # noqa: E402
from trdq.models.adapters import UnsupportedArchitectureError  # noqa: E402
from trdq.models.loader import LoadedModel, ModelSettings, load_model  # noqa: E402
from trdq.pretrained import from_pretrained, save_pretrained  # noqa: E402
from trdq.sampling import generate  # noqa: E402
from trdq.serialization import load, save  # noqa: E402

__all__ = [
    "LoadedModel", "ModelSettings", "QuantConfig", "TimeGroups", "UnsupportedArchitectureError", "calibrate",
    "calibrating", "convert", "from_pretrained", "generate", "load", "load_model", "prepare", "quantize", "realize",
    "save", "save_pretrained",
]
