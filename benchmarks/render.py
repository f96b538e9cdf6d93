"""Embedding-view rendering: server time and bytes per frame vs N, relaylab's explorer path against plain Datashader.

    python -m benchmarks render                       # N = 1e5, 1e6, 1e7
    python -m benchmarks render --smoke               # N = 1e4, 1e5
    python -m benchmarks render --sizes n=1000000,10000000

Points: a 2-D mixture of 8 Gaussian clusters, coloured by cluster (categorical). For each N and view (the full
extent, and a zoom onto 10% of its area at the centre):

- relaylab: the frame the explorer renders on a pan or zoom: `relaylab.explore.points.Points` (points stored in
  Z-order once, timed separately as `prepare`), then HoloViews' `datashade` (count_cat, the app's colour key and
  minimum alpha) and `dynspread` at the app's plot size, i.e. the operations the app's DynamicMap runs per frame;
  bytes = the RGBA image buffer of the Bokeh model built from the frame (what the server sends).
- datashader: plain `ds.Canvas.points(df, agg=count_cat)` + `tf.shade` + `tf.dynspread` on the same points in their
  original (random) order, at the same size: what a user of Datashader alone would write.
- selection: server-side resolution of a box covering ~10% of the points and of a lasso polygon, to sample indices;
  and, on a real project with one category of 1,000,000 samples, a box over all of it until the grid's first page of
  cards is ready (plus the 20 images of that page rendered from a cold cache).
- on-demand map: the layer view's t-SNE of 10,000 samples' raw inputs (`compute_map`: PCA, openTSNE, written to the
  store), with its progress as the explorer shows it, beside openTSNE alone on the same PCA features (the peer).

Warm-up runs are dropped (Numba compiles Datashader's kernels on the first call); median of the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

from . import format_table, machine_info, row, write_results

DESCRIPTION = "embedding view re-render time and bytes per frame vs N (1e5…1e7), relaylab vs plain Datashader"
DEFAULT_N = [100_000, 1_000_000, 10_000_000]
SMOKE_N = [10_000, 100_000]
GOAL_MS, GOAL_BYTES = 150, 2_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clusters", type=int, default=8, help="number of clusters (colours; default 8)")


def points(n: int, clusters: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.uniform(-20, 20, (clusters, 2))
    labels = rng.integers(0, clusters, n)
    xy = centers[labels] + rng.standard_normal((n, 2)) * rng.uniform(1, 4, clusters)[labels, None]
    return xy[:, 0].astype(np.float32), xy[:, 1].astype(np.float32), labels.astype(np.int64)


def timed(fn, warmup: int, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for i in range(warmup + repeats):
        start = time.perf_counter()
        result = fn()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times, result


def measure_selection_to_grid(args, n: int) -> list[dict]:
    """A box over a whole n-point category of a real project (a synthetic ViRelAy project opened as it is): time
    from the gesture to the grid's first page of cards (what the server does before the browser asks for images),
    and the 20 first-page images rendered from a cold cache (what the image route then does)."""
    import os
    from pathlib import Path

    from relaylab.data.synthetic import Variant, write_virelay_project
    from relaylab.explore.app import ProjectView
    from relaylab.explore.data import ProjectData

    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "relaylab" / "benchmarks" / f"render-select-{n}"
    yaml_path = folder / "project.yaml"
    if not yaml_path.exists():
        write_virelay_project(folder, Variant(n_samples=n, n_classes=1, height=8, width=8, attribution_files=1), name=f"select-{n}")
    data = ProjectData.of(yaml_path)
    view = ProjectView(data)
    x0, x1, y0, y1 = view.embedding.points.bounds
    timings, cards = [], 0
    for i in range(args.warmup + args.repeats):
        view.state.apply({"selection": [], "page": 0})
        start = time.perf_counter()
        view.embedding._on_box(bounds=(x0, y0, x1, y1))  # what the BoundsXY stream calls
        html = view.grid.cards_html()
        if i >= args.warmup:
            timings.append(time.perf_counter() - start)
        cards = html.count('data-sample="')
    selected = len(view.state.selection)
    first_page = view.state.selection[:20]
    data.pngs.clear()  # cold: nothing of this project rendered yet
    start = time.perf_counter()
    for sample in first_page:
        data.png(sample, view.state.mode, view.state.colormap, next(iter(data.project.attributions)))
    render_s = time.perf_counter() - start
    data.close()
    case = f"select n={n:,}"
    return [row("render", case, "box over the category -> grid's first page", [t * 1e3 for t in timings], "ms", selected=selected,
                cards=cards, goal="<= 300 ms at 1e6" if n >= 1_000_000 else "",
                ok=statistics.median(timings) <= 0.3 if n >= 1_000_000 else None),
            row("render", case, "its 20 images rendered, cold cache", render_s * 1e3, "ms")]


def measure_map_on_demand(args, n: int) -> list[dict]:
    """compute_map of n samples' raw inputs (8 clusters of 1×32×32 images), progress printed, against openTSNE alone
    on the same PCA features; one run each (t-SNE at 10,000 points takes a minute on 2 cores)."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import xarray as xr
    from openTSNE.sklearn import TSNE
    from sklearn.decomposition import PCA

    from relaylab.analyze.activations import INPUT, compute_map
    from relaylab.data import store as zstore
    from relaylab.data.labels import label_map_from_entries

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, n)
    centres = rng.uniform(0, 255, (8, 1, 32, 32))
    images = np.clip(centres[labels] + rng.normal(0, 40, (n, 1, 32, 32)), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "maps.zarr"
        zstore.create_store(path, project={"name": "maps", "model": "", "description": ""}, dataset={"name": "clusters"},
                            label_map=label_map_from_entries([{"index": i, "word_net_id": f"c{i}", "name": f"c{i}"} for i in range(8)]),
                            source="benchmarks.render")
        inputs = xr.Dataset({"input": (("sample", "channel", "y", "x"), images)}, coords={"sample": np.arange(n), "label": ("sample", labels)})
        zstore.write_dataset(path, "inputs", inputs, kind="inputs", attrs={"name": "clusters", "value_range": [0, 255]}, progress=False)
        zstore.update_store_metadata(path, status="complete")
        shown = []

        def progress(fraction: float) -> None:
            if not shown or fraction - shown[-1][1] >= 0.1 or fraction == 1.0:
                shown.append((time.perf_counter() - start, fraction))
                print(f"  map of {n:,}: {fraction:.0%} after {shown[-1][0]:.1f} s", flush=True)

        start = time.perf_counter()
        compute_map(path, INPUT, perplexity=30, on_progress=progress)
        relaylab_s = time.perf_counter() - start
        features = images.reshape(n, -1).astype(np.float32)
        start = time.perf_counter()
        reduced = PCA(n_components=0.9, random_state=0).fit_transform(features)
        TSNE(random_state=0, n_jobs=1, perplexity=30).fit_transform(reduced)
        peer_s = time.perf_counter() - start
    first_progress = shown[0][0] if shown else None
    print(f"on-demand map of {n:,} samples: {relaylab_s:.1f} s (openTSNE alone {peer_s:.1f} s, ratio {peer_s / relaylab_s:.2f}); "
          f"first progress after {first_progress:.1f} s", flush=True)
    return [row("render", f"map n={n:,}", "on-demand t-SNE (compute_map, into the store)", relaylab_s, "s",
                first_progress_s=first_progress, progress_updates=len(shown)),
            row("render", f"map n={n:,}", "openTSNE alone on the same PCA features", peer_s, "s", ratio_vs_relaylab=peer_s / relaylab_s)]


def run(args) -> int:
    import datashader as ds
    import datashader.transfer_functions as tf
    import holoviews as hv
    import numpy as np
    import pandas as pd
    from holoviews.operation.datashader import datashade, dynspread

    from relaylab.explore import embedding as emb
    from relaylab.explore.points import Points

    hv.extension("bokeh")
    sizes = SMOKE_N if args.smoke else DEFAULT_N
    if args.sizes:
        sizes = [int(float(v)) for token in args.sizes for v in token.partition("=")[2].split(",")]
    width, height = emb.PLOT_WIDTH, emb.PLOT_HEIGHT
    names = [f"cluster {k}" for k in range(args.clusters)]
    colors = emb.palette(args.clusters)
    key = dict(zip(names, colors))
    machine = machine_info()
    rows = []
    for n in sizes:
        x, y, labels = points(n, args.clusters)
        start = time.perf_counter()
        prepared = Points(x, y, np.arange(n))
        prepare_s = time.perf_counter() - start
        frame = prepared.frame(labels[prepared.member], names)
        element = hv.Points(frame, kdims=["x", "y"], vdims=["c"])
        raw = pd.DataFrame({"x": x, "y": y, "c": pd.Categorical.from_codes(labels, categories=names)})
        x0, x1, y0, y1 = prepared.bounds
        cx, cy, hx, hy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        zoom = 0.1 ** 0.5
        views = {"full": ((x0, x1), (y0, y1)), "zoom-10%": ((cx - hx * zoom, cx + hx * zoom), (cy - hy * zoom, cy + hy * zoom))}
        case = f"n={n:,}"
        rows.append(row("render", case, "prepare (Z-order, once per embedding)", prepare_s, "s"))
        for view, (xr, yr) in views.items():
            def relaylab_frame(xr=xr, yr=yr):
                shaded = datashade(element, aggregator=ds.count_cat("c"), color_key=key, min_alpha=90, dynamic=False,
                                   x_range=xr, y_range=yr, width=width, height=height)
                return dynspread(shaded, threshold=0.7, max_px=3, dynamic=False)

            def datashader_frame(xr=xr, yr=yr):
                canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=xr, y_range=yr)
                image = tf.shade(canvas.points(raw, "x", "y", ds.count_cat("c")), color_key=key, min_alpha=90)
                return tf.dynspread(image, threshold=0.7, max_px=3)

            times, rgb = timed(relaylab_frame, args.warmup, args.repeats)
            figure = hv.render(rgb)  # the Bokeh model of the frame: its image buffer is what goes to the browser
            image = next(r for r in figure.renderers if hasattr(r, "data_source")).data_source.data["image"][0]
            frame_bytes = int(np.asarray(image).nbytes)
            ms = [t * 1e3 for t in times]
            ok = statistics.median(ms) <= GOAL_MS and frame_bytes <= GOAL_BYTES if n >= 10_000_000 else None
            rows.append(row("render", f"{case} {view}", "relaylab frame", ms, "ms", bytes_per_frame=frame_bytes,
                            goal=f"<= {GOAL_MS} ms, <= 2 MB at 1e7" if ok is not None else "", ok=ok))
            base, _ = timed(datashader_frame, args.warmup, args.repeats)
            rows.append(row("render", f"{case} {view}", "plain datashader frame", [t * 1e3 for t in base], "ms",
                            ratio_vs_relaylab=statistics.median(base) / statistics.median(times)))
            print(f"{case} {view}: relaylab {statistics.median(ms):.0f} ms ({frame_bytes / 1e6:.2f} MB), "
                  f"plain datashader {statistics.median(base) * 1e3:.0f} ms", flush=True)
        box = (cx - hx * 0.3, cy - hy * 0.3, cx + hx * 0.3, cy + hy * 0.3)
        times, hits = timed(lambda: prepared.sample[prepared.in_box(*box)], args.warmup, args.repeats)
        rows.append(row("render", case, "box select -> sample indices", [t * 1e3 for t in times], "ms", selected=int(hits.size)))
        angle = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        polygon = np.column_stack([cx + hx * 0.4 * np.cos(angle) * (1 + 0.3 * np.sin(5 * angle)), cy + hy * 0.4 * np.sin(angle)])
        times, hits = timed(lambda: prepared.sample[prepared.in_polygon(polygon)], args.warmup, args.repeats)
        rows.append(row("render", case, "lasso select -> sample indices", [t * 1e3 for t in times], "ms", selected=int(hits.size)))
    rows += measure_selection_to_grid(args, 10_000 if args.smoke else 1_000_000)
    rows += measure_map_on_demand(args, 1_000 if args.smoke else 10_000)
    notes = [f"{args.warmup} warm-up dropped, median of {args.repeats}; frame = {width}×{height} px as the explorer draws it",
             "bytes_per_frame = the RGBA buffer of the Bokeh image glyph (what the server sends per frame, before framing)"]
    config = {"sizes": sizes, "clusters": args.clusters, "repeats": args.repeats, "warmup": args.warmup}
    json_path, csv_path = write_results("render", rows, out=args.out, config=config, machine=machine, notes=notes)
    from .plot import scaling_png

    frames = [r for r in rows if r["metric"] in ("relaylab frame", "plain datashader frame")]
    png = scaling_png(frames, json_path.with_suffix(".png"), x=lambda r: float(r["case"].split()[0][2:].replace(",", "")),
                      series=lambda r: f"{r['metric']} ({r['case'].split()[1]})", title="Embedding frame render time",
                      xlabel="points", ylabel="ms per frame")
    print(format_table(rows))
    print(f"\n{json_path}\n{csv_path}" + (f"\n{png}" if png else ""))
    return 0
