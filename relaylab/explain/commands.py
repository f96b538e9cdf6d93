"""CLI commands of the explain stage: ingest, model, layers, attribute, activations (`relaylab COMMAND --help`).

Only argparse and the standard library load here; each command imports what it runs when it runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli import RAW
from ..errors import RelaylabError

MODEL_HELP = """\
MODEL is either `module:callable` (a function or class returning a torch.nn.Module, imported from the Python path,
e.g. mypackage.nets:make_net) or a torchvision architecture name (vgg16, resnet18, ...). Weights are a state-dict
file (torch.save(model.state_dict(), F)); torchvision architectures are built without weights otherwise."""


def json_kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise RelaylabError.at("--kwargs", "", "a JSON object of keyword arguments, e.g. '{\"num_classes\": 10}'", str(error)) from None
    if not isinstance(value, dict):
        raise RelaylabError.at("--kwargs", "", "a JSON object of keyword arguments", type(value).__name__)
    return value


def target_arg(text: str) -> str | int:
    """true_label, predicted_label, or a class index."""
    if text in ("true_label", "predicted_label"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected true_label, predicted_label or a class index, got {text!r}") from None


def cmd_layers(args: argparse.Namespace) -> int:
    from .models import ModelSpec, list_layers, load_model

    spec = ModelSpec.from_dict({"model": args.model, "weights": str(args.weights) if args.weights else None,
                                "kwargs": json_kwargs(args.kwargs), "input_shape": list(args.input_shape)},
                               where="relaylab layers", path="arguments")
    layers = list_layers(load_model(spec), spec.input_shape)
    width = max([len("name")] + [len(entry["name"]) for entry in layers])
    type_width = max([len("type")] + [len(entry["type"]) for entry in layers])
    print(f"{'name':<{width}}  {'type':<{type_width}}  output shape")
    for entry in layers:
        print(f"{entry['name']:<{width}}  {entry['type']:<{type_width}}  {' x '.join(map(str, entry['output_shape']))}")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from ..data import store as zstore
    from .models import ModelSpec, record_model, relative_weights

    store = args.project
    meta = zstore.store_metadata(store)
    inputs = zstore.open_group(store, "inputs", chunks=None)
    shape = tuple(args.input_shape) if args.input_shape else tuple(int(inputs.sizes[d]) for d in ("channel", "y", "x"))
    recorded = (meta.get("dataset") or {}).get("preprocessing") or {}  # what `relaylab ingest` was told
    spec = ModelSpec.from_dict({"model": args.model, "weights": relative_weights(args.weights, store), "kwargs": json_kwargs(args.kwargs),
                                "input_shape": list(shape), "mean": args.mean or recorded.get("mean"), "std": args.std or recorded.get("std"),
                                "canonizer": args.canonizer},
                               where="relaylab model", path="arguments", base=Path(store).resolve().parent)
    layers = record_model(store, spec)
    print(f"recorded {spec.model} ({len(layers)} layers, input {' x '.join(map(str, shape))}, mean {list(spec.mean)}, "
          f"std {list(spec.std)}) in {store}")
    return 0


def cmd_attribute(args: argparse.Namespace) -> int:
    from .jobs import attribute

    group = attribute(args.project, name=args.name, method=args.method, target=args.target, layer=args.layer,
                      batch_size=args.batch_size, device=args.device, scheduler=args.scheduler, progress=not args.quiet,
                      model=args.model)
    print(f"wrote {group} ({args.method}, target {args.target}) in {args.project}")
    return 0


def cmd_activations(args: argparse.Namespace) -> int:
    from .jobs import activations

    pool = None if args.no_pool else tuple(args.pool)
    group = activations(args.project, layers=args.layers, name=args.name, pool=pool, top_k=args.top_k, batch_size=args.batch_size,
                        device=args.device, scheduler=args.scheduler, progress=not args.quiet, model=args.model)
    print(f"wrote {group} ({len(args.layers)} layers) in {args.project}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from .ingest import ingest

    options = {key: value for key, value in (("resize", args.resize), ("resize_to", args.resize_to), ("mean", args.mean),
                                             ("std", args.std), ("label_map", args.label_map)) if value is not None}
    out = ingest(args.folder, args.out, size=tuple(args.size), progress=not args.quiet, **options)
    print(f"wrote {out}")
    return 0


def add_commands(commands) -> None:
    from .methods import method_help

    ingest = commands.add_parser(
        "ingest", help="turn a folder of images (one sub-folder per class) into a relaylab store", formatter_class=RAW,
        description="Build a relaylab Zarr store OUT from FOLDER, an ImageNet-style folder with one sub-folder per class.\n"
                    "Images are decoded, made RGB, resized and center-cropped to --size as ImageNet models are\n"
                    "evaluated, and stored as uint8; the model's normalisation (--mean/--std) is recorded, not applied.\n"
                    "Files that are not readable images are skipped and listed in the store's metadata. A killed ingest\n"
                    "resumes when run again with the same arguments.\n\n"
                    "Next: `relaylab model OUT MODEL --weights F` records the network to explain.")
    ingest.add_argument("folder", type=Path, metavar="FOLDER")
    ingest.add_argument("out", type=Path, metavar="OUT")
    ingest.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"), help="stored image size (default: 224 224)")
    ingest.add_argument("--resize", choices=("shorter_side", "stretch"), help="shorter_side (default): scale to cover the size, "
                        "then center-crop; stretch: resize to the size directly")
    ingest.add_argument("--resize-to", type=int, metavar="PX", help="with shorter_side: scale the shorter side to PX first (256 for the usual 224 crop)")
    ingest.add_argument("--mean", type=float, nargs="+", metavar="M", help="the model's per-channel mean on 0..1 values (default: ImageNet's)")
    ingest.add_argument("--std", type=float, nargs="+", metavar="S", help="the model's per-channel std (default: ImageNet's)")
    ingest.add_argument("--label-map", type=Path, metavar="JSON", help="a ViRelAy label map naming the classes (default: the folder names)")
    ingest.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ingest.set_defaults(run=cmd_ingest)

    model = commands.add_parser(
        "model", help="record the model that explains a store (spec, weights, normalisation, layer list)", formatter_class=RAW,
        description="Record MODEL as the network of PROJECT (a relaylab Zarr store): every later `attribute`,\n"
                    "`activations` and the explorer's per-sample views rebuild it from this record.\n\n"
                    + MODEL_HELP + "\n\n"
                    "The model is loaded and run once on a dummy input before anything is recorded, so a spec that\n"
                    "does not import, weights that do not fit or an input size the model rejects are reported here.\n"
                    "The input shape defaults to the stored images' shape, --mean/--std to what `relaylab ingest`\n"
                    "recorded (else ImageNet's for torchvision architectures, none otherwise). The model sees\n"
                    "(x / 255 - mean) / std for uint8 images, (x - mean) / std for float images. A weights path inside\n"
                    "the store's parent folder is recorded relative to it, so the folder can be moved.")
    model.add_argument("project", type=Path, metavar="PROJECT")
    model.add_argument("model", metavar="MODEL")
    model.add_argument("--weights", type=Path, metavar="F", help="state-dict file")
    model.add_argument("--kwargs", metavar="JSON", help="keyword arguments for the callable, e.g. '{\"num_classes\": 10}'")
    model.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"), help="model input (default: the stored images' shape)")
    model.add_argument("--mean", type=float, nargs="+", metavar="M", help="per-channel mean on 0..1 values")
    model.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel standard deviation")
    model.add_argument("--canonizer", choices=("auto", "none", "sequential_merge_batch_norm", "vgg", "resnet"), default="auto",
                       help="zennit canonizer for LRP (default: auto = ResNet/VGG canonizers for torchvision models, "
                            "batch-norm merging where a batch norm follows a conv/linear layer)")
    model.set_defaults(run=cmd_model)

    layers = commands.add_parser(
        "layers", help="list a model's layers with their types and output shapes", formatter_class=RAW,
        description="Build MODEL, run one dummy input of --input-shape through it and print every layer the forward\n"
                    "pass calls, in order, with its type and output shape. The names are what --layer (CAMs) and\n"
                    "--layers (activations) take.\n\n" + MODEL_HELP)
    layers.add_argument("model", metavar="MODEL")
    layers.add_argument("--weights", type=Path, metavar="F", help="state-dict file (checked against the model)")
    layers.add_argument("--input-shape", type=int, nargs=3, default=(3, 224, 224), metavar=("C", "H", "W"), help="default: 3 224 224")
    layers.add_argument("--kwargs", metavar="JSON", help="keyword arguments for the callable, as a JSON object")
    layers.set_defaults(run=cmd_layers)

    attribute = commands.add_parser(
        "attribute", help="compute attributions of every sample and write them into the store", formatter_class=RAW,
        description="Explain every sample of PROJECT (a relaylab store with a recorded model) and write\n"
                    "attributions/NAME: attribution (sample, channel, y, x) float32 and prediction (sample, class),\n"
                    "the model's logits. CAM methods need --layer and write one channel.\n\n"
                    "Methods:\n" + method_help() + "\n\n"
                    "LRP methods start from the target's logit (the input relevance sums to it on bias-free\n"
                    "networks); the others from a one-hot vector. Everything is checked before anything is written.\n"
                    "A killed run resumes when run again with the same arguments, with the same bytes as an\n"
                    "uninterrupted one. --scheduler spreads blocks of samples over a Dask cluster's workers.")
    attribute.add_argument("project", type=Path, metavar="PROJECT")
    attribute.add_argument("--name", default="lrp", help="attribution set name (default: lrp)")
    attribute.add_argument("--method", default="epsilon_plus_flat", metavar="METHOD", help="see above (default: epsilon_plus_flat)")
    attribute.add_argument("--target", type=target_arg, default="predicted_label",
                           help="which class to explain: predicted_label (default), true_label, or a class index")
    attribute.add_argument("--layer", help="the layer of gradcam, layercam, focus_layercam and guided_gradcam (`relaylab layers` lists them)")
    attribute.add_argument("--batch-size", type=int, default=64, help="samples per forward/backward pass (default: 64)")
    attribute.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    attribute.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://host:8786 (default: this process)")
    attribute.add_argument("--model", metavar="VERSION", help="a corrected model version (`relaylab versions`; default: the recorded model)")
    attribute.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    attribute.set_defaults(run=cmd_attribute)

    activations = commands.add_parser(
        "activations", help="record pooled layer activations and top classes of every sample", formatter_class=RAW,
        description="Run every sample of PROJECT through its recorded model and write activations/NAME:\n"
                    "one group per layer with activation (sample, channel, y, x), adaptive-average-pooled to --pool\n"
                    "(flat layers: (sample, feature)), and top_k with each sample's --top-k classes (top_class) and\n"
                    "softmax probabilities (top_score). The explorer's per-layer views and\n"
                    "`relaylab analyze-layers` read them. A killed run resumes when run again with the same arguments.\n"
                    "--scheduler spreads blocks of samples over a Dask cluster's workers.")
    activations.add_argument("project", type=Path, metavar="PROJECT")
    activations.add_argument("--layers", nargs="+", required=True, metavar="LAYER", help="layer names (`relaylab layers` lists them)")
    activations.add_argument("--name", default="activations", help="activation set name (default: activations)")
    activations.add_argument("--pool", type=int, nargs=2, default=(4, 4), metavar=("H", "W"), help="pooled size of spatial layers (default: 4 4)")
    activations.add_argument("--no-pool", action="store_true", help="store spatial activations at full size")
    activations.add_argument("--top-k", type=int, default=10, help="top classes kept per sample (default: 10)")
    activations.add_argument("--batch-size", type=int, default=64, help="samples per forward pass (default: 64)")
    activations.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    activations.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://host:8786 (default: this process)")
    activations.add_argument("--model", metavar="VERSION", help="a corrected model version (`relaylab versions`; default: the recorded model)")
    activations.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    activations.set_defaults(run=cmd_activations)
