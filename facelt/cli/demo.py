"""``facelt demo``: the whole pipeline on built-in SYNTHETIC identities, no downloads, on the CPU
(its steps: :mod:`facelt.jobs.demo`, whose description ``--help`` shows)."""
from __future__ import annotations

import argparse
from pathlib import Path

from facelt.cli.common import add_device_arg, configs_dir


def register(sub: argparse._SubParsersAction) -> None:
    from facelt.jobs import demo as demo_job  # light: its work imports what it needs when run
    p = sub.add_parser("demo", help="the whole pipeline on built-in synthetic data (no downloads)",
                       description=demo_job.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="facelt_demo", help="output folder")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic data, the sampling and the training")
    p.add_argument("--identities", type=int, default=80, help="SYNTHETIC source identities")
    p.add_argument("--distractors", type=int, default=2000, help="SYNTHETIC distractor images")
    p.add_argument("--face-size", type=int, choices=[32, 112],
                   help="face image side: 32 (the recipe's, fastest) or 112 (insightface's crop: "
                        "its model_zoo.get_model loads the exported model; slower, see README); "
                        "above 32 the stage-2 spatial attention is the conv form")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of configs/demo_faces.yaml (repeatable)")
    add_device_arg(p, from_recipe=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facelt.jobs.demo import DemoOptions, demo
    demo(DemoOptions(out=Path(args.out), recipe=configs_dir() / "demo_faces.yaml", seed=args.seed,
                     identities=args.identities, distractors=args.distractors,
                     overrides=tuple(args.overrides), device=args.device,
                     face_size=args.face_size))
    return 0
