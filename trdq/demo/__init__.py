"""The demo world around the engine: what the embedded models, the evaluator, the benchmark and the
trainers need, and a user who quantizes their own model does not.

- :mod:`trdq.demo.shapes`, :mod:`trdq.demo.motion`, :mod:`trdq.demo.worlds`: the caption worlds
  of the embedded models (grammar, parser, renderer);
- :mod:`trdq.demo.eval`: the detector, metrics and runner of ``python -m trdq eval``;
- :mod:`trdq.demo.bench`: ``python -m trdq bench`` and its peers;
- :mod:`trdq.demo.train`: the training scripts of the embedded models and the detector.

``import trdq`` imports none of them.
"""
