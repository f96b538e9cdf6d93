"""The verification report of a corrected model version: `verification.json` (what `relaylab verify` recorded in the
store) and `index.html` with PNGs: the numbers of original and corrected model side by side as bars, the artifact
that was pasted (image and mask), and the same artifact samples explained by both models.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from ..analyze.census_report import COLORMAP, _png

# (key in the verification, label, short label for the bars)
NUMBERS = (("accuracy", "clean accuracy", "clean\naccuracy"), ("flip_rate", "artifact flip rate", "flip\nrate"),
           ("relevance_in_mask", "relevance in the artifact mask", "relevance\nin mask"),
           ("spray_auroc", "SpRAy best-eigenvector AUROC", "SpRAy\nAUROC"), ("census_score", "census score of the category", "census\nscore"),
           ("tcav_score", "TCAV score", "TCAV\nscore"))


WEAK_FLIP = 0.2  # an original flip rate below this: the artifact hardly acts as a shortcut


def weak_shortcut(result: dict) -> str | None:
    """A warning, in words, when the original model hardly follows the (estimated or given) artifact: the selection
    may be a way the category itself looks rather than a shortcut, and correcting it costs accuracy for nothing."""
    flips = result["original"].get("flip_rate")
    if flips is None or flips >= WEAK_FLIP:
        return None
    return (f"the artifact turns only {flips:.1%} of other classes' samples into {result['category']} with the original model: "
            f"the selection may be a way {result['category']} itself looks rather than a shortcut (clean accuracy "
            f"{result['original']['accuracy']:.3f} → {result['corrected']['accuracy']:.3f}); check its samples in the explorer, or "
            "give the artifact with --artifact-image/--artifact-mask")


def _bars_png(path: Path, result: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = [(key, short) for key, _, short in NUMBERS if result["original"].get(key) is not None]
    figure, axes = plt.subplots(figsize=(7.0, 2.8), dpi=100)
    x = np.arange(len(keys))
    for offset, (name, colour) in zip((-0.2, 0.2), (("original", "#7f8c8d"), ("corrected", "#2e86c1"))):
        values = [0.0 if result[name].get(key) is None else float(result[name][key]) for key, _ in keys]
        axes.bar(x + offset, values, width=0.38, color=colour, label=name)
    axes.set_xticks(x, [short for _, short in keys], fontsize=7)
    axes.set_ylim(0, 1.05)
    axes.tick_params(labelsize=7)
    axes.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path.name


def _input_rgba(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    peak = 255.0 if image.max(initial=0) > 1.0 else 1.0
    grey = np.clip(image / peak * 255, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey, 3, axis=0) if grey.shape[0] == 1 else grey[:3]
    return np.dstack([*rgb, np.full(rgb.shape[1:], 255, np.uint8)])


def _cell(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def write_report(result: dict, figures: dict, out: str | Path) -> Path:
    """Write `out/verification.json`, `out/index.html` and its PNGs (into a temporary sibling folder, then moved into
    place, so a report is never half-written); returns the HTML's path."""
    from ..explore.render import heatmap_rgba, mask_rgba

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        (work / "verification.json").write_text(json.dumps(result, indent=2))
        bars = _bars_png(work / "numbers.png", result)
        artifact = _png(work / "artifact.png", _input_rgba(figures["artifact"]))
        mask = _png(work / "mask.png", mask_rgba(figures["mask"] > 0.5))
        rows = []
        for i, sample in enumerate(figures["samples"]):
            cells = [_png(work / f"input-{sample}.png", _input_rgba(figures["inputs"][i]))]
            cells += [_png(work / f"{name}-{sample}.png", heatmap_rgba(figures[f"heatmaps_{name}"][i], COLORMAP)) for name in ("original", "corrected")]
            rows.append(f"<tr><td>{int(sample)}</td>" + "".join(f'<td><img src="{c}" width="96" style="image-rendering:pixelated"></td>'
                                                                 for c in cells) + "</tr>")
        table = "".join(f"<tr><td>{label}</td><td>{_cell(result['original'].get(key))}</td><td>{_cell(result['corrected'].get(key))}</td></tr>"
                        for key, label, _ in NUMBERS)
        table += (f"<tr><td>accuracy on held-out artifact samples</td><td>{_cell(result['original'].get('accuracy_artifact_samples'))}</td>"
                  f"<td>{_cell(result['corrected'].get('accuracy_artifact_samples'))}</td></tr>"
                  f"<tr><td>TCAV directional derivative</td><td>{result['original']['tcav_derivative']:.3g}</td>"
                  f"<td>{result['corrected']['tcav_derivative']:.3g}</td></tr>")
        e = result["evaluation"]
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>relaylab verify: {html.escape(result['version'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}} td,th{{padding:2px 8px;text-align:left}}</style></head><body>
<h1>{html.escape(result['version'])}: original against corrected</h1>
<p>{html.escape(result['method'])} at layer <code>{html.escape(result['layer'])}</code>, category <b>{html.escape(result['category'])}</b>
(class {result['label']}); artifact samples: {html.escape(result['selection']['source'])}, {result['selection']['samples']} of
{result['selection']['members']}. Evaluated on {html.escape(e['samples'])}: {e['clean']} clean samples (accuracy, flip rate),
{e['heatmaps']} artifact samples (relevance in the mask), {e['spray']} category members (SpRAy, census), {e['tcav']} (TCAV).</p>
{f'<p class="warning" style="color:#a04000"><b>Note:</b> {html.escape(weak_shortcut(result))}</p>' if weak_shortcut(result) else ''}
<table><tr><th></th><th>original</th><th>corrected</th></tr>{table}</table>
<p><img src="{bars}" alt="numbers"></p>
<h2>The artifact pasted for the flip rate ({html.escape(result['artifact']['source'])}, {result['artifact']['mask_pixels']} pixels)</h2>
<p><img src="{artifact}" width="96" style="image-rendering:pixelated"> <img src="{mask}" width="96" style="image-rendering:pixelated"></p>
<h2>Artifact samples explained by both models ({html.escape(result['attribution']['method'])}, class {result['label']})</h2>
<table><tr><th>sample</th><th>input</th><th>original</th><th>corrected</th></tr>{''.join(rows)}</table>
</body></html>"""
        (work / "index.html").write_text(page)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out / "index.html"
