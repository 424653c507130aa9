"""Edge-cluster experiments: ``gcomp train`` (runner), link and energy models, network emulation."""

from .links import Link, parse_link, parse_links
from .report import summary_table
from .runner import BASELINES, DEFAULT_COMPRESSOR, TrainOptions, train

__all__ = ["TrainOptions", "train", "summary_table", "DEFAULT_COMPRESSOR", "BASELINES", "Link", "parse_link", "parse_links"]
