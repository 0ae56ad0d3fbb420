"""``--resume`` continues the run that was started, or refuses.

The resolved config of the resumed run is compared key by key with the config saved in the
checkpoint. Keys that change what is trained (lists, batch size, learning rates, schedule, model,
seed, AMP ...) must be equal: each changed one is named in a :class:`~facelt.errors.ConfigError`.
Keys that do not change the training may differ (:data:`RESUME_FREE_KEYS`), and the stage's
``epochs`` may grow (not shrink below the epochs already trained); both are recorded in
``OUT/stageN/resumes.jsonl``.

Resuming stage 1 ignores the ``stage2`` section (stage 2 has not used it yet); resuming stage 2
compares everything, ``stage1`` included (stage 2 started from that stage 1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from facelt.config import Config, config_from_dict, upgrade_saved_config
from facelt.errors import ConfigError

#: keys (or sections, ending in ``.``) that may change on resume: how or where the run computes,
#: logs and reports, never what it trains
RESUME_FREE_KEYS = (
    "name", "out", "device", "log_every", "log.",
    "data.num_workers",
    "eval.batch_size", "eval.threshold", "eval.sweep", "eval.many", "eval.few", "eval.shot_rule",
    "eval.verification", "eval.verify_every",
    "stage1.checkpoint_every", "stage2.checkpoint_every",
    # the class-sharded head computes the same maths and saves consolidated checkpoints, so a run
    # may move between one GPU's head and a head sharded over the processes
    "stage1.shard_head", "stage2.shard_head",
)


def flatten_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out


def is_resume_free(key: str) -> bool:
    """Whether ``key`` may change on resume (:data:`RESUME_FREE_KEYS`)."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_FREE_KEYS)


def config_changes(saved: dict, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value in ``cfg`` differs from the saved config ``saved`` (read as
    the current version reads it: older flat keys moved, keys it lacks at their defaults):
    ``{key: (saved value, current value)}``."""
    old = flatten_config(config_from_dict(upgrade_saved_config(saved),
                                          where="the checkpoint's config").to_dict())
    new = flatten_config(cfg.to_dict())
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)}


def check_resume_config(saved: dict, cfg: Config, stage: int, epochs_done: int,
                        checkpoint: Path) -> dict[str, tuple[Any, Any]]:
    """Refuse (:class:`~facelt.errors.ConfigError` naming each changed key) to resume stage
    ``stage`` of the run saved in ``checkpoint`` (config ``saved``, ``epochs_done`` finished
    epochs) with a config that trains differently; return the allowed changes (to record)."""
    changes = config_changes(saved, cfg)
    if stage == 1:
        changes = {k: v for k, v in changes.items() if not k.startswith("stage2.")}
    epochs_key = f"stage{stage}.epochs"
    refused = {k: v for k, v in changes.items() if not is_resume_free(k) and k != epochs_key}
    lines = [f"  {k}: {old!r} in the run, {new!r} now" for k, (old, new) in refused.items()]
    if epochs_key in changes and changes[epochs_key][1] < epochs_done:
        old, new = changes[epochs_key]
        lines.append(f"  {epochs_key}: {new!r} now, but the run already trained {epochs_done} "
                     f"epochs (it may grow, not shrink)")
    if lines:
        raise ConfigError(
            f"--resume {checkpoint}: the config differs from the run's in keys that change the "
            f"training:\n" + "\n".join(lines) +
            f"\nrestore those values to continue, or start a new run with another --out "
            f"(keys free to change on resume: "
            f"{', '.join(k + '*' if k.endswith('.') else k for k in RESUME_FREE_KEYS)}, and "
            f"{epochs_key} upwards)")
    return changes
