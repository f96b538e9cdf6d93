"""CLI commands of the fix stage: fix, verify, versions (`relaylab COMMAND --help`).

Only argparse and the standard library load here; each command imports what it runs when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import EXIT_OK, RAW


def report_folder(store: Path, version: str, given: Path | None) -> Path:
    return given or store.resolve().parent / f"{store.name.removesuffix('.zarr')}.verify-{version}"


def print_verification(result: dict, page: Path) -> None:
    rows = (("clean accuracy", "accuracy"), ("artifact flip rate", "flip_rate"), ("relevance in mask", "relevance_in_mask"),
            ("SpRAy AUROC", "spray_auroc"), ("census score", "census_score"), ("TCAV score", "tcav_score"))
    print(f"{result['version']}: {result['method']} at {result['layer']}, category {result['category']} "
          f"({result['selection']['samples']} artifact samples: {result['selection']['source']})")
    print(f"  {'':<20}{'original':>10}{'corrected':>11}")
    for label, key in rows:
        before, after = result["original"][key], result["corrected"][key]
        show = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"  {label:<20}{show(before):>10}{show(after):>11}")
    if (note := weak_shortcut_note(result)) is not None:
        print(f"note: {note}")
    print(f"report {page}")


def weak_shortcut_note(result: dict) -> str | None:
    """A warning when the original model hardly follows the artifact: what was removed may be a way the class looks."""
    from .report import weak_shortcut

    return weak_shortcut(result)


def cmd_fix(args: argparse.Namespace) -> int:
    from ..data.workstore import prepare_store
    from .job import fix, verify
    from .report import write_report

    store = prepare_store(args.project, store=args.store, progress=not args.quiet)
    entry = fix(store, analysis=args.analysis, category=args.category, cluster=args.cluster, selection=args.selection, layer=args.layer,
                method=args.method, version=args.version, cav=args.cav, strength=args.strength, epochs=args.epochs, lr=args.lr,
                device=args.device, replace=args.replace, progress=not args.quiet)
    print(f"recorded model version {entry['version']} in {store}: {entry['correction']['method']} at {entry['correction']['layer']}, "
          f"CAV held-out balanced accuracy {entry['cav']['accuracy']:.3f} ({entry['cav']['n_artifact']} artifact vs "
          f"{entry['cav']['n_clean']} other samples)")
    if args.no_verify:
        return EXIT_OK
    result, figures = verify(store, entry["version"], artifact_image=args.artifact_image, artifact_mask=args.artifact_mask,
                             device=args.device, progress=not args.quiet)
    print_verification(result, write_report(result, figures, report_folder(store, entry["version"], args.report)))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from .job import verify
    from .report import write_report

    result, figures = verify(args.project, args.model, artifact_image=args.artifact_image, artifact_mask=args.artifact_mask,
                             device=args.device, progress=not args.quiet)
    print_verification(result, write_report(result, figures, report_folder(args.project, args.model, args.report)))
    return EXIT_OK


def cmd_versions(args: argparse.Namespace) -> int:
    from ..explain.models import model_versions

    for name, entry in model_versions(args.project).items():
        correction = entry.get("correction") or {}
        verified = (entry.get("verification") or {}).get("corrected") or {}
        what = f"{correction.get('method')} at {correction.get('layer')}, category {entry['selection']['category']}" if correction else "as recorded"
        numbers = (f"; accuracy {verified['accuracy']:.3f}, flip rate {verified['flip_rate']:.3f}"
                   if verified.get("accuracy") is not None and verified.get("flip_rate") is not None else "")
        print(f"{name}: {entry['spec']['model']} ({what}){numbers}")
    return EXIT_OK


def add_artifact_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact-image", type=Path, metavar="PNG", help="the artifact as an image of the inputs' size, "
                        "pasted where --artifact-mask is white (default: estimated from the artifact's samples)")
    parser.add_argument("--artifact-mask", type=Path, metavar="PNG", help="white where the artifact is")
    parser.add_argument("--report", type=Path, metavar="DIR", help="report folder (default: beside the store, <store>.verify-<version>)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_commands(commands) -> None:
    fix = commands.add_parser(
        "fix", help="remove a Clever-Hans strategy from the model (ClArC) into a new model version, then verify it",
        formatter_class=RAW,
        description="Learn the artifact's direction in a layer's activations (a concept activation vector: the\n"
                    "artifact's samples against the rest of their category, with its held-out accuracy) and correct\n"
                    "the model along it:\n"
                    "  p-clarc   project the direction out at inference (a forward hook; no training)\n"
                    "  rr-clarc  fine-tune with a penalty on the outputs' gradient along the direction (Reveal to Revise)\n"
                    "  a-clarc   fine-tune on data with the (estimated) artifact added to every class\n"
                    "The artifact's samples: --cluster CLUSTERING:K of the analysis, --selection FILE (a state exported\n"
                    "from the explorer, or sample indices), or by default the census's most suspicious cluster (of\n"
                    "--category, or of the census's top category). The corrected model is written beside the store\n"
                    "(<store>.models/VERSION.pt) and recorded as model version VERSION; the original is never changed.\n"
                    "Then `relaylab verify` runs on it (unless --no-verify).\n\n"
                    "  relaylab fix project.zarr --category 3                          # census top cluster, P-ClArC\n"
                    "  relaylab fix project.zarr --category 3 --cluster kmeans-02:1 --method rr-clarc --layer features.3\n"
                    "  relaylab attribute project.zarr --model p-clarc-digit-3 --name lrp-fixed   # the version's heatmaps")
    fix.add_argument("project", type=Path, metavar="PROJECT", help="a relaylab store with a model and a SpRAy analysis, or a "
                     "ViRelAy/CoRelAy project (converted once to a work store, as analyze does)")
    fix.add_argument("--store", type=Path, metavar="PATH", help="where a project's files are converted to (default: beside it)")
    fix.add_argument("--analysis", default="spectral_analysis", help="analysis name (default: spectral_analysis)")
    fix.add_argument("--category", help="the category (its name, class name or class index; default: the census's top category)")
    fix.add_argument("--cluster", metavar="CLUSTERING:K", help="the artifact's samples: cluster K of a clustering of the category")
    fix.add_argument("--selection", type=Path, metavar="FILE", help="the artifact's samples: an explorer state export, a JSON list, "
                     ".npy or one index per line")
    fix.add_argument("--layer", default="auto", help="the layer to correct (`relaylab layers`); auto (default): of up to 4 "
                     "convolutional layers, the one where P-ClArC removes the estimated artifact's flips with the fewest "
                     "changed predictions, measured on samples that are never evaluated")
    fix.add_argument("--method", choices=("p-clarc", "rr-clarc", "a-clarc"), default="p-clarc", help="default: p-clarc")
    fix.add_argument("--version", help="name of the new model version (default: METHOD-CATEGORY)")
    fix.add_argument("--replace", action="store_true", help="replace an existing version of that name")
    fix.add_argument("--cav", choices=("pattern", "filter"), default="pattern", help="the direction: the mean difference "
                     "(pattern, default) or the linear classifier's weights (filter)")
    fix.add_argument("--strength", type=float, default=1e4, help="RR-ClArC's penalty weight λ (default: 1e4)")
    fix.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (default: 5)")
    fix.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate, Adam (default: 1e-3; lower it for large "
                     "pretrained networks)")
    fix.add_argument("--no-verify", action="store_true", help="record the version without verifying it")
    add_artifact_arguments(fix)
    fix.set_defaults(run=cmd_fix)

    verify = commands.add_parser(
        "verify", help="measure a corrected model version against the original", formatter_class=RAW,
        description="Original against corrected model version VERSION, side by side: clean accuracy on held-out\n"
                    "samples; the artifact flip rate (the artifact pasted into correctly classified samples of other\n"
                    "classes: the share then called the artifact's class); the share of relevance inside the artifact\n"
                    "mask on the artifact's samples; SpRAy of the category re-run on each model's heatmaps (the best\n"
                    "eigenvector's AUROC for the artifact's samples, the census score); the class output's sensitivity\n"
                    "along the direction (TCAV score and directional derivative, at the layer's own output).\n"
                    "The artifact is estimated from its samples (relevance mask grown by input contrast, filled with their\n"
                    "mean input) unless given as an image and mask. Written into the store\n"
                    "(model_versions.VERSION.verification) and a report: verification.json and index.html with PNGs.")
    verify.add_argument("project", type=Path, metavar="STORE", help="a relaylab store with the model version")
    verify.add_argument("--model", required=True, metavar="VERSION", help="the model version (`relaylab versions STORE` lists them)")
    add_artifact_arguments(verify)
    verify.set_defaults(run=cmd_verify)

    versions = commands.add_parser("versions", help="list a store's model versions (the original and corrected ones)",
                                   description="List the model versions of STORE: the recorded model and each version `relaylab fix` "
                                               "added, with its correction and verified accuracy and flip rate.")
    versions.add_argument("project", type=Path, metavar="STORE")
    versions.set_defaults(run=cmd_versions)
