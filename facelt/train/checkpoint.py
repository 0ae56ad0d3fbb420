"""Checkpoints: plain tensors and primitives only, written atomically, read with ``weights_only``.

A checkpoint is a dict with ``format``, the resolved ``config`` (plain data), ``stage``, ``epoch``,
``num_classes``, ``class_counts``, ``class_names``, the ``model`` state dict and, for resuming,
``optimizer`` / ``scheduler`` / ``scaler`` states and the torch RNG state. Nothing in it is unpickled
as code: :func:`load_checkpoint` uses ``torch.load(weights_only=True)``, which refuses pickled callables.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from facelt.errors import CheckpointError
from facelt.utils.io import atomic_path

FORMAT = "facelt-checkpoint-v1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temporary file; the previous file survives a crash."""
    state = dict(state)
    state["format"] = FORMAT
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{p}: refused to load: it holds objects other than tensors and plain data "
            f"(weights_only load failed: {str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{p}: not a readable checkpoint (truncated or corrupt?): "
                              f"{str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a facelt checkpoint (expected format '{FORMAT}')")
    return state


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: str,
                     prefixes: tuple[str, ...] | None = None) -> None:
    """Load ``state_dict`` into ``model`` strictly (restricted to ``prefixes`` when given).

    A checkpoint from another model (missing keys, unexpected keys, other shapes) is an error that
    lists the offending keys.
    """
    own = model.state_dict()
    if prefixes is not None:
        own_keys = {k for k in own if k.startswith(prefixes)}
        src = {k: v for k, v in state_dict.items() if k.startswith(prefixes)}
    else:
        own_keys = set(own)
        src = dict(state_dict)
    missing = sorted(own_keys - set(src))
    unexpected = sorted(set(src) - own_keys)
    shapes = sorted(k for k in own_keys & set(src) if tuple(own[k].shape) != tuple(src[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            k = shapes[0]
            parts.append(f"shape mismatch at {k}: checkpoint {tuple(src[k].shape)} vs model "
                         f"{tuple(own[k].shape)} ({len(shapes)} keys)")
        raise CheckpointError(f"{where}: checkpoint does not fit this model: " + "; ".join(parts))
    model.load_state_dict(src, strict=prefixes is None)
