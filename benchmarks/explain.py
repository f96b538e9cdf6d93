"""Attribution throughput: relaylab's methods (zennit LRP composites, Grad-CAM, …) against a plain gradient pass
(forward + backward) of the same model, batch and device.

    python -m benchmarks explain                         # the demo CNN on the CPU
    python -m benchmarks explain --models demo vgg16 --device cuda
    python -m benchmarks explain --smoke                 # small batches, under a minute

Throughput = samples per second of `relaylab.explain.attribution.Explainer` on one preprocessed batch already in
memory on the device (the same call `relaylab attribute` makes per batch), timed after warm-up, median of repeats;
ratio = throughput / plain-gradient throughput. VGG16 has random weights (nothing is downloaded), 224×224 inputs;
the demo CNN is relaylab's (1×32×32 digits). On CUDA every timing ends with torch.cuda.synchronize().
"""

from __future__ import annotations

import argparse
import statistics
import time

from . import format_table, machine_info, row, write_results

DESCRIPTION = "attribution throughput (LRP composites, Grad-CAM, …) vs a plain gradient pass, per model and device"
MODELS = {  # name → (model spec, input shape, CAM layer, batch on cpu, batch on cuda)
    "demo": ("relaylab.explain.demo_model:digits_cnn", (1, 32, 32), "features.4", 256, 1024),
    "vgg16": ("vgg16", (3, 224, 224), "features.28", 4, 64),
    "resnet50": ("resnet50", (3, 224, 224), "layer4", 4, 64),
}
METHODS = ("epsilon_plus_flat", "epsilon_plus", "epsilon_alpha2_beta1_flat", "guided_backprop", "gradcam", "layercam")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=["demo"], help="models (default: demo)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=f"methods (default: {' '.join(METHODS)})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: per model and device)")


def plain_gradient(model, x, targets):
    """The baseline: one forward and one backward pass to the input, nothing else."""
    import torch

    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), x)
    return grad


def timed(fn, device: str, warmup: int, repeats: int) -> list[float]:
    import torch

    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def run(args) -> int:
    import torch

    from relaylab.explain.attribution import Explainer
    from relaylab.explain.models import ModelSpec, load_model

    machine = machine_info()
    if args.device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(0)
    machine["versions"]["torch"] = torch.__version__
    machine["torch_threads"] = torch.get_num_threads()
    rows = []
    for name in args.models:
        spec_name, shape, cam_layer, cpu_batch, cuda_batch = MODELS[name]
        batch = args.batch or (8 if args.smoke and name == "demo" else cpu_batch if args.device == "cpu" else cuda_batch)
        spec = ModelSpec.from_dict({"model": spec_name, "input_shape": list(shape), "mean": [0.0] * shape[0], "std": [1.0] * shape[0]})
        model = load_model(spec, args.device)
        generator = torch.Generator().manual_seed(0)
        x = torch.rand((batch, *shape), generator=generator).to(args.device)
        with torch.no_grad():
            targets = model(x).argmax(1)
        base = timed(lambda: plain_gradient(model, x, targets), args.device, args.warmup, args.repeats)
        base_rate = batch / statistics.median(base)
        rows.append(row("explain", f"{name}/{args.device}/b{batch}", "plain_gradient", [batch / t for t in base], "samples/s", ratio=1.0))
        print(f"{name} on {args.device}, batch {batch}: plain gradient {base_rate:.1f} samples/s", flush=True)
        for method in args.methods:
            layer = cam_layer if method in ("gradcam", "layercam", "guided_gradcam") else None
            with Explainer(model, method, layer=layer) as explainer:
                times = timed(lambda: explainer(x, targets), args.device, args.warmup, args.repeats)
            rates = [batch / t for t in times]
            ratio = statistics.median(rates) / base_rate
            ok = ratio >= 0.5 if method.startswith("epsilon") else None
            rows.append(row("explain", f"{name}/{args.device}/b{batch}", method, rates, "samples/s", ratio=ratio,
                            goal=">= 0.5 x plain gradient" if ok is not None else "", ok=ok))
            print(f"  {method}: {statistics.median(rates):.1f} samples/s ({ratio:.2f} x plain gradient)", flush=True)
        if "epsilon_plus_flat" in args.methods:  # zennit's stock composite, for the gain of relaylab's one-term ZPlus
            from zennit.attribution import Gradient
            from zennit.composites import EpsilonPlusFlat

            from relaylab.explain.models import canonizers_for

            def seed(y):
                return torch.nn.functional.one_hot(targets, y.shape[1]).to(y) * y

            with Gradient(model=model, composite=EpsilonPlusFlat(canonizers=canonizers_for(model))) as attributor:
                times = timed(lambda: attributor(x, seed), args.device, args.warmup, args.repeats)
            rates = [batch / t for t in times]
            ratio = statistics.median(rates) / base_rate
            rows.append(row("explain", f"{name}/{args.device}/b{batch}", "zennit EpsilonPlusFlat (stock)", rates, "samples/s", ratio=ratio))
            print(f"  zennit's stock EpsilonPlusFlat: {statistics.median(rates):.1f} samples/s ({ratio:.2f} x plain gradient)", flush=True)
    notes = [f"{args.warmup} warm-up call(s) dropped, median of {args.repeats}; batch in memory on the device; "
             "ratio = method throughput / plain forward+backward throughput of the same model, batch and device"]
    config = {"models": args.models, "methods": args.methods, "device": args.device, "batch": args.batch,
              "repeats": args.repeats, "warmup": args.warmup}
    json_path, csv_path = write_results("explain", rows, out=args.out, config=config, machine=machine, notes=notes)
    print(format_table(rows))
    for r in rows:
        print(f"{r['case']:<24} {r['metric']:<28} {r['ratio']:.2f} x plain gradient")
    print(f"\n{json_path}\n{csv_path}")
    return 0
