"""A model on this machine, through one of several backends: no key, no network, no cost."""

from pipeline.providers.local.embedder import LocalEmbedder, model_path

__all__ = ["LocalEmbedder", "model_path"]
