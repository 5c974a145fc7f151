"""Evaluation in the shapes world: the detector, the metrics, and the runner behind ``eval``."""
