"""Simulators and evaluation: the fast in-process simulator, datasets, methods, reports."""
