"""Figures moved to `sde.runs.figures` (inference writes them too); these names stay importable."""

from sde.runs.figures import save_image_grid, save_scatter  # noqa: F401
