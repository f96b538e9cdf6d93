"""Sample images as the explorer shows them: inputs, heatmaps and overlays, as lossless PNGs.

An attribution is summed over channels and divided by max |a| (ViRelAy divides three of its maps by max(a), which
inverts or overflows all-negative maps; an all-zero map divides by zero). An all-zero (or non-finite) map renders as
the colour map's colour for 0, never NaN. Overlay mode blends the heatmap over a greyscale copy of the input with alpha
0.9 |a| / max |a|, as ViRelAy does. Inputs are scaled from the project's value range. Images are PNG (lossless), not
ViRelAy's quality-70 JPEG. Every function here takes an open `Project`; `ProjectData.png` caches what they render.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..data.hdf5 import guess_value_range
from ..data.project import Project
from ..errors import RelaylabError
from .colormaps import COLORMAPS, check_colormap

MODES = ("input", "attribution", "overlay")
SAMPLINGS = ("automatic", "smooth", "pixelated")
VIRELAY_DISPLAY_PX = 150  # ViRelAy's sample viewer switches to pixelated at shorter side <= 150 px (its hover preview: 128)
OVERLAY_OPACITY = 0.9


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise RelaylabError.at("mode", "", f"one of {', '.join(MODES)}", repr(mode))



# ------------------------------------------------------------------------------------------------------ heatmaps


def normalized(a: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) attribution → (H, W) float64 in [-1, 1]: summed over channels, divided by max |a|."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        a = a.sum(axis=0)
    a = np.where(np.isfinite(a), a, 0.0)
    peak = np.abs(a).max(initial=0.0)
    return a / peak if peak > 0 else np.zeros_like(a)


def heatmap_rgba(a: np.ndarray, colormap: str) -> np.ndarray:
    """(H, W, 4) uint8 heatmap; an all-zero map is the colour map's colour for 0 everywhere."""
    check_colormap(colormap)
    return COLORMAPS[colormap](normalized(a))


def mask_rgba(mask: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8: a boolean mask in white on black (the census's estimated artifact masks)."""
    grey = np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)
    return np.dstack([grey, grey, grey, np.full_like(grey, 255)])


def overlay_rgba(image_rgb: np.ndarray, a: np.ndarray, colormap: str) -> np.ndarray:
    """ViRelAy's overlay: the heatmap blended over the greyscale input with alpha 0.9 |a| / max |a| (Pillow's composite)."""
    x = normalized(a)
    heat = Image.fromarray(heatmap_rgba(x, colormap)[..., :3])
    grey = Image.fromarray(image_rgb).convert("L").convert("RGB")
    mask = Image.fromarray((np.abs(x) * OVERLAY_OPACITY * 255).astype(np.uint8))
    rgb = np.asarray(Image.composite(heat, grey, mask))
    return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)


def sampling_for(height: int, width: int, display_px: int = VIRELAY_DISPLAY_PX) -> str:
    """ViRelAy's automatic sampling: pixelated when the image's shorter side is at most the size it is shown at (so small
    images are not smeared), smooth for larger ones (so pixelation does not hide detail)."""
    return "pixelated" if min(height, width) <= display_px else "smooth"


def css_image_rendering(sampling: str, height: int, width: int, display_px: int = VIRELAY_DISPLAY_PX) -> str:
    """The CSS `image-rendering` value for a sampling choice ('automatic' resolved by `sampling_for`)."""
    if sampling not in SAMPLINGS:
        raise RelaylabError.at("sampling", "", f"one of {', '.join(SAMPLINGS)}", repr(sampling))
    resolved = sampling_for(height, width, display_px) if sampling == "automatic" else sampling
    return "pixelated" if resolved == "pixelated" else "auto"


def encode_png(rgba: np.ndarray) -> bytes:
    """Lossless PNG; zlib level 1: about 4x faster than the default level 6 at 224 px, a few % larger."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def colormap_preview_png(name: str, width: int = 256, height: int = 16) -> bytes:
    """A gradient from -1 to 1, as ViRelAy's colour-map picker shows."""
    check_colormap(name)
    return encode_png(COLORMAPS[name](np.repeat(np.linspace(-1.0, 1.0, width)[None, :], height, axis=0)))


# ------------------------------------------------------------------------------------------------------ samples


def check_sample(project: Project, sample) -> int:
    n = project.inputs.sizes["sample"]
    if isinstance(sample, bool) or not isinstance(sample, int | np.integer) or not 0 <= sample < n:
        raise RelaylabError.at(project.path, "inputs/sample", f"a sample index in 0..{n - 1}", repr(sample))
    return int(sample)


def attribution_set(project: Project, name: str | None) -> str:
    """The named attribution set, or the project's first when None."""
    names = list(project.attributions)
    if name is None and names:
        return names[0]
    if name not in project.attributions:
        raise RelaylabError.at(project.path, "attributions", f"an attribution set ({', '.join(names) or 'the project has none'})", repr(name))
    return name


def check_attributed(project: Project, sample: int, name: str | None) -> str:
    """The attribution set's name, if it holds the sample (an attribution set may cover only some samples)."""
    name = attribution_set(project, name)
    if sample not in project.attributions[name].indexes["sample"]:
        raise RelaylabError.at(project.path, f"attributions/{name}/sample", "a sample that has an attribution", str(sample))
    return name


def attribution_of(project: Project, sample: int, name: str | None) -> np.ndarray:
    return project.attributions[check_attributed(project, sample, name)]["attribution"].sel(sample=sample).values


def value_range(project: Project, x: np.ndarray) -> tuple[float, float]:
    """The project's recorded input value range; unrecorded (float HDF5 inputs never converted), ViRelAy's guess from
    this sample's values, as ViRelAy makes it per sample."""
    recorded = project.inputs.attrs.get("value_range")
    low, high = recorded if recorded is not None else guess_value_range(float(x.min()), float(x.max()))
    return float(low), float(high)


def input_rgb(project: Project, sample: int) -> np.ndarray:
    """(H, W, 3) uint8 image of a sample scaled from the project's value range; one channel (or other than 3) → grey."""
    if not project.has_images:
        raise RelaylabError.at(project.path, "inputs/input", "input images (mode 'input')",
                               "none: the project holds attributions without their dataset; show mode 'attribution'")
    x = project.inputs["input"].sel(sample=check_sample(project, sample)).values.astype(np.float64)
    lo, hi = value_range(project, x)
    x = ((x - lo) / (hi - lo) * 255).round().clip(0, 255).astype(np.uint8)
    if x.shape[0] != 3:
        x = np.repeat(x.mean(axis=0, keepdims=True).round().astype(np.uint8), 3, axis=0)
    return np.ascontiguousarray(x.transpose(1, 2, 0))


def render_rgba(project: Project, sample: int, mode: str, colormap: str, attribution: str | None = None) -> np.ndarray:
    check_mode(mode)
    check_colormap(colormap)
    sample = check_sample(project, sample)
    if mode == "input":
        rgb = input_rgb(project, sample)
        return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    a = attribution_of(project, sample, attribution)
    if mode == "attribution" or not project.has_images:  # nothing to overlay on: the heatmap alone
        return heatmap_rgba(a, colormap)
    return overlay_rgba(input_rgb(project, sample), a, colormap)


def render_png(project: Project, sample: int, mode: str, colormap: str, attribution: str | None = None) -> bytes:
    return encode_png(render_rgba(project, sample, mode, colormap, attribution))
