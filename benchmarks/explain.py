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
    "demo": ("relaylab.demo.model:digits_cnn", (1, 32, 32), "features.4", 256, 1024),
    "vgg16": ("vgg16", (3, 224, 224), "features.28", 4, 64),
    "resnet50": ("resnet50", (3, 224, 224), "layer4", 4, 64),
}
METHODS = ("epsilon_plus_flat", "epsilon_plus", "epsilon_alpha2_beta1_flat", "guided_backprop", "gradcam", "layercam")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=["demo"], help="models (default: demo)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=f"methods (default: {' '.join(METHODS)})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: per model and device)")
    parser.add_argument("--live", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the explorer's card click (the sample inspector's row) on each model (default: yes)")


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


def live_store(folder, spec_name: str, shape: tuple[int, int, int], n: int = 4):
    """A small store of random images with `spec_name` recorded as its model (random weights)."""
    import numpy as np
    import xarray as xr

    from relaylab.data import store as zstore
    from relaylab.data.labels import label_map_from_entries
    from relaylab.explain.models import ModelSpec, load_model, n_outputs, record_model

    spec = ModelSpec.from_dict({"model": spec_name, "input_shape": list(shape)})
    classes = n_outputs(load_model(spec), shape)
    path = folder / f"{spec_name.replace(':', '-')}.zarr"
    zstore.create_store(path, project={"name": "live", "model": spec_name, "description": ""}, dataset={"name": "random"},
                        label_map=label_map_from_entries([{"index": i, "word_net_id": f"c{i}", "name": f"class {i}"} for i in range(classes)]),
                        source="benchmarks.explain")
    rng = np.random.default_rng(0)
    inputs = xr.Dataset({"input": (("sample", "channel", "y", "x"), rng.integers(0, 256, (n, *shape), dtype=np.uint8))},
                        coords={"sample": np.arange(n), "label": ("sample", rng.integers(0, classes, n))}, attrs={"value_range": [0, 255]})
    zstore.write_dataset(path, "inputs", inputs, kind="inputs", attrs={"name": "random", "value_range": [0, 255]}, progress=False)
    record_model(path, spec)
    zstore.update_store_metadata(path, status="complete")
    return path


def measure_live(args, name: str) -> list[dict]:
    """The explorer's click on a card: the sample inspector's whole row (input, Grad-CAM/LayerCAM/Focus LayerCAM at
    the default depth, guided backprop, guided Grad-CAM, LRP, top-10, every figure encoded as PNG) built on the server,
    for a sample not seen before (first) and the same sample again (cached); then the depth slider moved (another
    layer's CAMs, from the cached pass). Goals from the explorer issue: first ≤ 0.3 s for the demo and ≤ 1.5 s for
    VGG16 at 224² on 2 CPU cores; cached ≤ 50 ms. The browser's share (one websocket message, decoding the PNGs) is
    what the browser tests print beside it."""
    import tempfile
    from pathlib import Path

    from relaylab.explore.data import ProjectData
    from relaylab.explore.inspector import SampleInspector
    from relaylab.explore.state import ViewState, fitted_values

    spec_name, shape = MODELS[name][0], MODELS[name][1]
    goal = 0.3 if name == "demo" else 1.5
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = live_store(Path(folder), spec_name, shape, n=args.warmup + args.repeats + 1)
        data = ProjectData.of(store)
        state = ViewState()
        state.apply(fitted_values(data.project, state.values()))
        start = time.perf_counter()
        view = SampleInspector(data, state)  # loads the model once per process
        load = time.perf_counter() - start
        first, cached, depth = [], [], []
        for sample in range(args.warmup + args.repeats):
            start = time.perf_counter()
            html = view.row_html(sample)
            elapsed = time.perf_counter() - start
            assert 'data-kind="lrp"' in html, html[:500]
            start = time.perf_counter()
            view.row_html(sample)
            again = time.perf_counter() - start
            state.depth = 0 if view.depth else 1
            start = time.perf_counter()
            view.row_html(sample)
            moved = time.perf_counter() - start
            state.depth = None
            if sample >= args.warmup:
                first.append(elapsed)
                cached.append(again)
                depth.append(moved)
        data.close()
    case = f"{name}/{args.device} inspector"
    ok = statistics.median(first) <= goal if args.device == "cpu" else None
    rows.append(row("explain", case, "model load (once per server process)", load, "s"))
    rows.append(row("explain", case, "card click: new sample, every explanation", first, "s", goal=f"<= {goal} s" if ok is not None else "",
                    ok=ok))
    rows.append(row("explain", case, "same sample again (cached)", [t * 1e3 for t in cached], "ms",
                    goal="<= 50 ms", ok=statistics.median(cached) <= 0.05))
    rows.append(row("explain", case, "depth slider moved (cached pass)", [t * 1e3 for t in depth], "ms"))
    print(f"{case}: model load {load:.2f} s, card click {statistics.median(first):.3f} s, cached "
          f"{statistics.median(cached) * 1e3:.1f} ms, depth moved {statistics.median(depth) * 1e3:.1f} ms", flush=True)
    return rows


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
    if args.live:
        for name in args.models:
            rows += measure_live(args, name)
    notes = [f"{args.warmup} warm-up call(s) dropped, median of {args.repeats}; batch in memory on the device; "
             "ratio = method throughput / plain forward+backward throughput of the same model, batch and device"]
    config = {"models": args.models, "methods": args.methods, "device": args.device, "batch": args.batch,
              "repeats": args.repeats, "warmup": args.warmup}
    json_path, csv_path = write_results("explain", rows, out=args.out, config=config, machine=machine, notes=notes)
    print(format_table(rows))
    for r in rows:
        if "ratio" in r:
            print(f"{r['case']:<24} {r['metric']:<28} {r['ratio']:.2f} x plain gradient")
    print(f"\n{json_path}\n{csv_path}")
    return 0
