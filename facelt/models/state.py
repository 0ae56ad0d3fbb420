"""Model-state helpers: how a state dict differs from a model's, and a strict load that names the
offending keys (used by checkpoints, pretrained-weight loaders and stage initialisation)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from facelt.errors import CheckpointError


@dataclass
class StateDiff:
    """How a source state dict differs from a model's: keys missing from the source, keys the
    model does not have, and ``"key: file (shape) vs model (shape)"`` for shared keys of other shapes."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)


def diff_state(own: dict[str, torch.Tensor], src: dict[str, torch.Tensor],
               optional_suffixes: tuple[str, ...] = ()) -> StateDiff:
    """Compare ``src`` against ``own``; own keys ending in ``optional_suffixes`` may be absent."""
    missing = sorted(k for k in own if k not in src and not k.endswith(optional_suffixes))
    unexpected = sorted(k for k in src if k not in own)
    mismatched = [f"{k}: file {tuple(src[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in src and tuple(src[k].shape) != tuple(own[k].shape)]
    return StateDiff(missing, unexpected, mismatched)


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: str,
                     prefixes: tuple[str, ...] | None = None) -> None:
    """Load ``state_dict`` into ``model`` strictly (restricted to ``prefixes`` when given).

    A checkpoint from another model (missing keys, unexpected keys, other shapes) is an error that
    lists the offending keys.
    """
    own = model.state_dict()
    if prefixes is not None:
        own = {k: v for k, v in own.items() if k.startswith(prefixes)}
        src = {k: v for k, v in state_dict.items() if k.startswith(prefixes)}
    else:
        src = dict(state_dict)
    diff = diff_state(own, src)
    if diff:
        parts = []
        if diff.missing:
            parts.append(f"missing keys {diff.missing[:5]}{' ...' if len(diff.missing) > 5 else ''}")
        if diff.unexpected:
            parts.append(f"unexpected keys {diff.unexpected[:5]}"
                         f"{' ...' if len(diff.unexpected) > 5 else ''}")
        if diff.mismatched:
            parts.append(f"shape mismatch at {diff.mismatched[0]} ({len(diff.mismatched)} keys)")
        raise CheckpointError(f"{where}: checkpoint does not fit this model: " + "; ".join(parts))
    model.load_state_dict(src, strict=prefixes is None)
