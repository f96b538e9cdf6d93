"""CLI command of the demo: `relaylab demo DIR` builds the built-in demo project."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import RAW


def cmd_demo(args: argparse.Namespace) -> int:
    from .build import build_demo

    print(f"wrote {build_demo(args.out, seed=args.seed, progress=not args.quiet)}")
    return 0


def add_commands(commands) -> None:
    demo = commands.add_parser(
        "demo", help="build the demo project: a small model, planted artifact, attributions, SpRAy, ViRelAy export",
        formatter_class=RAW,
        description="Write a complete example into DIR: DIR/project.zarr (images, some carrying a planted artifact,\n"
                    "a trained model, LRP attributions, a spectral analysis per class, activations with their\n"
                    "embeddings) and DIR/virelay/ (the same project in ViRelAy's files). Serve it with\n"
                    "`relaylab serve DIR/project.zarr`.")
    demo.add_argument("out", type=Path, metavar="DIR")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=cmd_demo)
