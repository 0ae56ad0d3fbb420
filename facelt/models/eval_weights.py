"""Which weights of a trained stage an evaluation reads: ``best.pt`` or the last epoch.

The OLTR reference (``run_networks.py``) and classifier-balancing evaluate ``state_dict_best``,
the epoch of the best validation top-1, with that epoch's centroids. A facelt stage folder holds
``checkpoint.pt`` (the last epoch) and, when the run had a validation split, ``best.pt`` (the model
state of the epoch with the best validation ``overall``: the meta head's centroids, classifier
and every other tensor of that epoch, no optimizer).

``auto`` (the default of ``facelt classify`` and ``facelt compare``): ``best.pt`` wherever the
run has a validation split (``data.val`` of the stage's ``config.yaml``), the last epoch where it
has none. ``best`` / ``last`` ask for one of them. A file given by name is evaluated as it is.
Every report says which weights it read (:func:`weights_label`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from facelt.errors import CheckpointError, ConfigError

__all__ = ["WEIGHT_CHOICES", "BEST_FILE", "LAST_FILE", "run_has_validation", "evaluation_weights",
           "weights_label"]

WEIGHT_CHOICES = ("auto", "best", "last")
BEST_FILE = "best.pt"
LAST_FILE = "checkpoint.pt"


def run_has_validation(stage_dir: str | Path) -> Optional[bool]:
    """Whether the stage in ``stage_dir`` trained with a validation split (``data.val`` set in
    the ``config.yaml`` the trainer writes there); None when that file is absent."""
    path = Path(stage_dir) / "config.yaml"
    if not path.is_file():
        return None
    from facelt.config import load_yaml
    data = (load_yaml(path) or {}).get("data") or {}
    return bool(data.get("val"))


def evaluation_weights(target: str | Path, choice: str = "auto") -> Path:
    """The weights file to evaluate. ``target``: a checkpoint file (returned as it is) or a stage
    folder (``OUT/stageN``), where ``choice`` picks ``best.pt``, ``checkpoint.pt`` or (``auto``)
    ``best.pt`` when the run has a validation split and the last epoch when it has none."""
    if choice not in WEIGHT_CHOICES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {choice!r}")
    target = Path(target)
    if target.is_file():
        return target
    if not target.is_dir():
        raise CheckpointError(f"{target}: no such checkpoint file or stage folder")
    best, last = target / BEST_FILE, target / LAST_FILE
    if choice == "auto":
        has_val = run_has_validation(target)
        if has_val is None:  # no config.yaml: what the folder holds decides
            has_val = best.is_file()
        choice = "best" if has_val else "last"
        if has_val and not best.is_file():
            raise CheckpointError(
                f"{best} does not exist although the run has a validation split (data.val): no "
                f"epoch has finished validating yet; --weights last evaluates {last}")
    path = best if choice == "best" else last
    if not path.is_file():
        hint = ("no val split, so no best.pt? --weights last evaluates the last epoch"
                if choice == "best" else "has this stage trained?")
        raise CheckpointError(f"{path} does not exist ({hint})")
    return path


def weights_label(state: Mapping, path: str | Path) -> str:
    """``"best (epoch 7)"`` for a best-on-val file, ``"last (epoch 10)"`` for an epoch-end
    checkpoint (``"last (epoch 10 + 300 steps)"`` mid-epoch), from the loaded checkpoint; a file
    not written by a training stage: ``"as given (no training epoch recorded)"``."""
    if "epoch" not in state:
        return "as given (no training epoch recorded)"
    epoch = int(state["epoch"]) + 1
    is_best = "optimizer" not in state or Path(path).name == BEST_FILE
    if is_best:
        val = (state.get("best") or {}).get("val_overall")
        return f"best (epoch {epoch}" + (f", val overall {val:.4f})" if val is not None else ")")
    partial = state.get("partial")
    if partial:
        return f"last (epoch {epoch} + {int(partial.get('step', 0))} steps)"
    return f"last (epoch {epoch})"
