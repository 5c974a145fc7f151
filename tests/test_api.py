import numpy as np
import pytest
import torch

from trdq.api import calibrate, convert, prepare, quantize
from trdq.config import QuantConfig, TimeGroups
from trdq.demo.eval.metrics import psnr
from trdq.layers import QuantLinear
from trdq.sampling import generate

PROMPTS = ["a large red circle in the center", "a small blue star on the left"]


def _images(model):
    return generate(model, PROMPTS, [0, 1], steps=4)


@pytest.mark.parametrize("method", ["rtn", "smoothquant", "quarot", "duquant", "viditq", "trdq"])
def test_every_method_quantizes_at_w8a8_close_to_fp(tiny_pixart_72, method):
    config = QuantConfig(method=method, time_groups=TimeGroups(2), block_size=32)
    fp = _images(tiny_pixart_72)
    q = quantize(tiny_pixart_72, config, PROMPTS, steps=4)
    layers = [m for m in q.pipe.transformer.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 2 * 10  # 2 blocks x (q, k, v, out) x 2 attentions + 2 feed-forward
    assert psnr(_images(q), fp).mean() > 25


def test_quantize_is_non_destructive(tiny_pixart):
    before = _images(tiny_pixart)
    quantize(tiny_pixart, QuantConfig(w_bits=4, a_bits=4), PROMPTS, steps=4)
    assert not any(isinstance(m, QuantLinear) for m in tiny_pixart.pipe.transformer.modules())
    assert np.array_equal(_images(tiny_pixart), before)


def test_time_groups_get_their_own_transforms(tiny_pixart):
    q = quantize(tiny_pixart, QuantConfig(w_bits=4, a_bits=4, time_groups=TimeGroups(4)), PROMPTS, steps=4)
    layer = next(m for m in q.pipe.transformer.modules() if isinstance(m, QuantLinear))
    assert layer.num_groups == 4


def test_convert_before_calibrate_is_a_clear_error(tiny_pixart):
    with pytest.raises(RuntimeError, match="calibrate"):
        convert(prepare(tiny_pixart, QuantConfig()))


def test_patterns_that_match_nothing_are_rejected(tiny_pixart):
    with pytest.raises(ValueError, match="match no nn.Linear"):
        prepare(tiny_pixart, QuantConfig(include=("*no_such_layer*",)))


def test_more_groups_than_steps_is_rejected(tiny_pixart):
    with pytest.raises(ValueError, match="at most 4 groups"):
        calibrate(prepare(tiny_pixart, QuantConfig(time_groups=TimeGroups(8))), PROMPTS, steps=4)


def test_one_string_is_not_taken_for_a_list_of_prompts(tiny_pixart):
    with pytest.raises(ValueError, match="pass a list of prompts"):
        calibrate(prepare(tiny_pixart, QuantConfig()), "a small red circle on the left", steps=4)


def test_non_finite_calibration_activations_are_rejected(tiny_pixart):
    prepared = prepare(tiny_pixart, QuantConfig())
    name, layer = next(iter(prepared.layers.items()))
    handle = layer.register_forward_pre_hook(lambda m, args: (args[0] * float("nan"),))
    try:
        with pytest.raises(ValueError, match="NaN/Inf"):
            calibrate(prepared, PROMPTS, steps=4)
    finally:
        handle.remove()


@pytest.mark.parametrize("method", ["rtn", "duquant", "trdq"])
def test_one_calibration_serves_other_methods_and_bits(tiny_pixart, method):
    """A method of one group merges the groups' statistics: the same model as its own calibration."""
    shared = calibrate(prepare(tiny_pixart, QuantConfig(method="trdq", time_groups=TimeGroups(2), block_size=16)),
                       PROMPTS, steps=4)
    config = QuantConfig(method=method, w_bits=4, a_bits=6, time_groups=TimeGroups(2), block_size=16)
    own = quantize(tiny_pixart, config, PROMPTS, steps=4)
    reused = convert(shared, config)
    assert reused.quant.index == own.quant.index and reused.quant.config == config
    codes = {k: v for k, v in own.pipe.transformer.state_dict().items() if k.endswith("w_codes")}
    assert codes and all(torch.equal(v, reused.pipe.transformer.state_dict()[k]) for k, v in codes.items())
    assert np.array_equal(_images(reused), _images(own))


@pytest.mark.parametrize("change, message", [
    (dict(seed=1), "seed"), (dict(time_groups=TimeGroups(4)), "4 groups"),
    (dict(include=("*attn1*",)), "other layers"), (dict(cfg_split=True), "each branch apart")])
def test_a_config_the_calibration_cannot_serve_is_refused(tiny_pixart, change, message):
    shared = calibrate(prepare(tiny_pixart, QuantConfig(method="viditq", time_groups=TimeGroups(2))), PROMPTS, steps=4)
    with pytest.raises(ValueError, match=message):
        convert(shared, QuantConfig(**{"method": "trdq", "time_groups": TimeGroups(2), **change}))


def test_a_one_group_calibration_cannot_serve_a_grouped_method(tiny_pixart):
    single = calibrate(prepare(tiny_pixart, QuantConfig(method="rtn")), PROMPTS, steps=4)
    with pytest.raises(ValueError, match="one group"):
        convert(single, QuantConfig(method="viditq", time_groups=TimeGroups(2)))


def test_a_search_s_choices_rebuild_its_model_without_searching(tiny_pixart, monkeypatch):
    from trdq import methods
    from trdq.api import choices_of

    config = QuantConfig(method="trdq", w_bits=4, a_bits=4, time_groups=TimeGroups(2), block_size=16)
    prepared = calibrate(prepare(tiny_pixart, config), PROMPTS, steps=4)
    searched = convert(prepared)
    choices = choices_of(searched)
    assert {kind for per_group in choices.values() for _, kind in per_group} - {"none", "smooth", "rotate", "both"} == set()
    monkeypatch.setattr(methods, "_error", lambda *a: pytest.fail("searched although given choices"))
    rebuilt = convert(prepared, choices=choices)
    assert choices_of(rebuilt) == choices
    state = rebuilt.pipe.transformer.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in searched.pipe.transformer.state_dict().items())


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.popitem(), "exactly the quantized layers"),
    (lambda c: c.update({k: v[:1] for k, v in c.items()}), "1 entries for 2 time groups"),
    (lambda c: c.update({k: [(None, "twist")] * 2 for k in c}), "unknown kind"),
    (lambda c: c.update({k: [(None, "smooth")] * 2 for k in c}), "alpha in"),
    (lambda c: c.update({k: [(1.5, "both")] * 2 for k in c}), "alpha in")])
def test_choices_that_do_not_fit_are_refused(tiny_pixart, edit, message):
    from trdq.api import choices_of

    config = QuantConfig(method="trdq", w_bits=4, a_bits=4, time_groups=TimeGroups(2), block_size=16)
    prepared = calibrate(prepare(tiny_pixart, config), PROMPTS, steps=4)
    choices = choices_of(convert(prepared))
    edit(choices)
    with pytest.raises(ValueError, match=message):
        convert(prepared, choices=choices)


@pytest.mark.parametrize("method, choice, message", [
    ("viditq", (None, "rotate"), "applies no rotation"), ("quarot", (0.5, "both"), "applies no smoothing")])
def test_choices_a_method_cannot_make_are_refused(tiny_pixart, method, choice, message):
    prepared = calibrate(prepare(tiny_pixart, QuantConfig(method="viditq", time_groups=TimeGroups(2))), PROMPTS, steps=4)
    config = QuantConfig(method=method, time_groups=TimeGroups(2))
    groups = 2 if method == "viditq" else 1
    with pytest.raises(ValueError, match=message):
        convert(prepared, config, choices={name: [choice] * groups for name in prepared.layers})


def test_calibrating_records_while_the_caller_runs_the_pipeline(tiny_pixart):
    import trdq

    config = QuantConfig(method="trdq", w_bits=4, a_bits=4, time_groups=TimeGroups(2), block_size=16)
    scheduler = tiny_pixart.pipe.scheduler
    with trdq.calibrating(tiny_pixart, config) as cal:
        generate(tiny_pixart, PROMPTS, [0, 1], steps=4)  # the caller's own sampling run
    assert "set_timesteps" not in vars(scheduler)  # the pipeline is as it was
    q = cal.convert()
    own = quantize(tiny_pixart, config, PROMPTS, steps=4)
    assert q.quant.index == own.quant.index and q.quant.index.num_groups == 2
    state = q.pipe.transformer.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in own.pipe.transformer.state_dict().items())
    assert cal.convert(QuantConfig(method="rtn", w_bits=8, a_bits=8)).quant.index.num_groups == 1


def test_calibrating_cuts_groups_from_the_schedule_it_sees(tiny_pixart):
    import trdq

    config = QuantConfig(method="viditq", time_groups=TimeGroups(3))
    with trdq.calibrating(tiny_pixart, config) as cal:
        generate(tiny_pixart, PROMPTS[:1], [0], steps=6)
    assert cal.convert().quant.index.num_groups == 3
    with pytest.raises(ValueError, match="one schedule"):
        with trdq.calibrating(tiny_pixart, config):
            generate(tiny_pixart, PROMPTS[:1], [0], steps=6)
            generate(tiny_pixart, PROMPTS[:1], [0], steps=8)
    with pytest.raises(ValueError, match="at most 2 groups"):
        with trdq.calibrating(tiny_pixart, config):
            generate(tiny_pixart, PROMPTS[:1], [0], steps=2)


def test_calibrating_without_a_call_or_a_schedule_is_a_clear_error(tiny_pixart):
    import trdq

    config = QuantConfig(method="trdq", time_groups=TimeGroups(2))
    with pytest.raises(ValueError, match="saw no call"):
        with trdq.calibrating(tiny_pixart, config):
            pass
    transformer = tiny_pixart.pipe.transformer
    with pytest.raises(ValueError, match="before any schedule"):
        with trdq.calibrating(transformer, config) as cal:
            transformer(torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 16, 64),
                        timestep=torch.tensor([500]))
    with pytest.raises(RuntimeError, match="after the with block"):
        cal.convert()


def test_calibrating_takes_a_plain_diffusers_pipeline_call(tiny_pixart):
    import trdq

    pipe = tiny_pixart.pipe
    run = dict(num_inference_steps=5, output_type="np", max_sequence_length=16, use_resolution_binning=False,
               clean_caption=False)
    config = QuantConfig(method="trdq", time_groups=TimeGroups(2), block_size=16)
    with trdq.calibrating(pipe, config) as cal:
        pipe(PROMPTS, guidance_scale=4.5, **run)
    qpipe = cal.convert()
    assert type(qpipe) is type(pipe) and qpipe.transformer.trdq_info.index.num_groups == 2
    assert any(isinstance(m, QuantLinear) for m in qpipe.transformer.modules())
    assert not any(isinstance(m, QuantLinear) for m in pipe.transformer.modules())
    assert qpipe(PROMPTS[:1], **run).images.shape == pipe(PROMPTS[:1], **run).images.shape


def test_importing_the_core_pulls_in_no_demo_world_evaluator_benchmark_trainer_analysis_or_gradio():
    import subprocess
    import sys

    code = ("import sys, trdq\n"
            "print(sorted(m for m in sys.modules if m.startswith(('trdq.demo', 'analysis', 'gradio', 'app'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
