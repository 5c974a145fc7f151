"""Seeded, resumable training scripts for the embedded models and the evaluator's detector.

Run each as a module, e.g. ``python -m trdq.demo.train.t2i --help``.
"""
