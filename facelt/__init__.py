"""facelt: open long-tailed recognition at identity scale. ``import facelt`` stays light: the one
Python entry point, :func:`load_embedder` (``facelt.faces.embedder``), is imported when first used."""
from __future__ import annotations

__all__ = ["load_embedder"]


def __getattr__(name: str):
    if name == "load_embedder":
        from facelt.faces.embedder import load_embedder
        return load_embedder
    raise AttributeError(f"module 'facelt' has no attribute {name!r}")
