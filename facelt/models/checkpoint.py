"""Checkpoints: plain tensors and primitives only, written atomically, read with ``weights_only``.

A checkpoint is a dict with ``format``, the resolved ``config`` (plain data), ``stage``, ``epoch``,
``num_classes``, ``class_counts``, ``class_names``, the ``model`` state dict and, for resuming,
``optimizer`` / ``scheduler`` / ``scaler`` states and the torch RNG state. Nothing in it is unpickled
as code: :func:`load_checkpoint` uses ``torch.load(weights_only=True)``, which refuses pickled callables.
It is also the one place older layouts are read in the current one: model keys written before the
network had a body (``backbone.*`` ...) become ``body.*`` (:func:`facelt.models.net.upgrade_model_keys`).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from facelt.errors import CheckpointError
from facelt.config import Config, config_from_dict, upgrade_saved_config
from facelt.models.build import build_net
from facelt.models.components import check_component_names
from facelt.models.net import OLTRNet, upgrade_model_keys
from facelt.models.state import load_model_state
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
        raise CheckpointError(f"checkpoint not found: {p}" + (" (it is a folder)" if p.is_dir() else ""))
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: the file is empty (0 bytes), not a checkpoint")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{p}: refused to load: it holds objects other than tensors and plain data "
            f"(weights_only load failed: {str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{p}: not a readable checkpoint (truncated or corrupt?): "
                              f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    except Exception as exc:  # torch.load on a text file / garbage: KeyError, IndexError, ValueError ...
        raise CheckpointError(f"{p}: not a torch checkpoint file (torch.load failed with "
                              f"{type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a facelt checkpoint (expected format '{FORMAT}')")
    check_checkpoint_structure(state, p)
    state["model"] = upgrade_model_keys(state["model"])  # files written before models.net.Body
    return state


#: What every facelt checkpoint holds, and the type of each entry.
REQUIRED_ENTRIES = {"config": dict, "stage": int, "num_classes": int, "model": dict}


def check_checkpoint_structure(state: dict[str, Any], path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming ``path`` and the entry when a checkpoint lacks an entry
    of :data:`REQUIRED_ENTRIES` or holds one of another type (or a model entry that is no tensor)."""
    for key, tp in REQUIRED_ENTRIES.items():
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no '{key}' entry (a damaged or foreign file)")
        if not isinstance(state[key], tp) or isinstance(state[key], bool):
            raise CheckpointError(f"{path}: checkpoint entry '{key}' is a {type(state[key]).__name__}, "
                                  f"expected {tp.__name__}")
    if state["stage"] not in (1, 2):
        raise CheckpointError(f"{path}: checkpoint entry 'stage' is {state['stage']}, expected 1 or 2")
    bad = next((k for k, v in state["model"].items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: model entry '{bad}' is a {type(state['model'][bad]).__name__}, "
                              "expected a tensor")


def check_finite_weights(model_state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming ``path``, the first parameter key holding NaN or inf
    and how many keys do: such a network classifies every image alike (confidence nan)."""
    bad = [k for k, v in model_state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" (and {len(bad) - 1} more keys)" if len(bad) > 1 else ""
        raise CheckpointError(f"{path}: model weight '{bad[0]}'{more} holds NaN or inf values; "
                              "the run diverged or the file is damaged: use an earlier checkpoint")


def net_from_checkpoint(path: str | Path, device: torch.device) -> tuple[OLTRNet, Config, dict]:
    """Rebuild the network a checkpoint was trained with and load its weights (strictly);
    returns ``(net on device, in eval mode; its config; the checkpoint dict)``."""
    state = load_checkpoint(path)
    check_finite_weights(state["model"], path)
    where = f"{path} (embedded config)"
    cfg = check_component_names(config_from_dict(upgrade_saved_config(state["config"]), where), where)
    net = build_net(cfg, int(state["stage"]), int(state["num_classes"]))
    load_model_state(net, state["model"], str(path))
    return net.to(device).eval(), cfg, state
