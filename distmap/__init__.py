"""distmap: multimodal knowledge graph completion (MAP and baselines), single process or on Ray."""

__version__ = "0.1.0"
