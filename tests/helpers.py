"""Helpers shared by the test modules (test modules import from here, never from each other).

- `run_cli`: the real `relaylab` command line in a child process, for the end-to-end cases where the process
  boundary is what is tested (exit status, no traceback on stderr, a SIGKILL); `call_cli` runs the same `main` in
  this process (conftest's `cli` fixture captures its output).
- `TinyNet`, `TINY`, `save_weights`, `make_store`: a tiny real network and a complete store for the explain tests.
- `free_port`, `get`, `wait_for`: a local HTTP server's port, a GET and waiting until it answers.
- `virelay_resampled`: what ViRelAy's up- and down-sampling make of an image, written out with NumPy and Pillow.
"""

from __future__ import annotations

import http.client
import math
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from relaylab.data import store as zstore
from relaylab.data.labels import label_map_from_entries
from relaylab.explain.models import ModelSpec, record_model

# ------------------------------------------------------------------------------------------------ the command line


@dataclass
class CliResult:
    """What a `relaylab` command returned and printed, as `subprocess.CompletedProcess` names it."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real `relaylab` command line, in a child process."""
    return subprocess.run([sys.executable, "-m", "relaylab.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def call_cli(capsys, *args) -> CliResult:
    """`relaylab.cli.main(args)` in this process, its output captured with pytest's `capsys`. argparse's refusals
    (SystemExit) become exit statuses, as in a child process; `main` itself turns any other exception into exit
    status 1 and one line on stderr (a test that expects success shows that line: assert on `returncode, stderr`)."""
    from relaylab.cli import main

    capsys.readouterr()  # drop what came before
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 2
    out, err = capsys.readouterr()
    return CliResult(code, out, err)


# ---------------------------------------------------------------------------------------- a tiny network and store

TINY = "tests.helpers:TinyNet"


class TinyNet(nn.Module):
    """Two convolutions and a linear layer; 16×16 inputs only (the linear layer fixes the size)."""

    def __init__(self, n_classes: int = 5, bias: bool = False, batchnorm: bool = False):
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3, padding=1, bias=bias)] + ([nn.BatchNorm2d(8)] if batchnorm else [])
        layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(16 * 4 * 4, n_classes, bias=bias)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def save_weights(path: Path, seed: int = 0, **kwargs) -> Path:
    """A seeded TinyNet's weights (with non-trivial batch-norm statistics when it has one) saved to `path`."""
    torch.manual_seed(seed)
    model = TinyNet(**kwargs)
    if kwargs.get("batchnorm"):  # non-trivial statistics, so merging the batch norm changes the weights
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
        model.features[1].weight.data.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return path


def make_store(path: Path, *, n: int = 40, n_classes: int = 5, seed: int = 0, kwargs: dict | None = None,
               mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)) -> Path:
    """A complete store of random uint8 3×16×16 images with a TinyNet spec and weights file beside it."""
    rng = np.random.default_rng(seed)
    label_map = label_map_from_entries([{"index": i, "word_net_id": f"n{i:08d}", "name": f"class {i}"} for i in range(n_classes)])
    zstore.create_store(path, project={"name": "tiny", "model": TINY, "description": ""}, dataset={"name": "random"},
                        label_map=label_map, source="test")
    inputs = xr.Dataset({"input": (("sample", "channel", "y", "x"), rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8))},
                        coords={"sample": np.arange(n), "label": ("sample", rng.integers(0, n_classes, n))})
    zstore.write_dataset(path, "inputs", inputs, kind="inputs", attrs={"name": "random", "value_range": [0.0, 255.0]}, progress=False)
    kwargs = {"n_classes": n_classes, **(kwargs or {})}
    save_weights(path.parent / "tiny.pt", seed, **kwargs)
    record_model(path, ModelSpec(TINY, weights="tiny.pt", kwargs=kwargs, input_shape=(3, 16, 16), mean=mean, std=std,
                                 base=str(path.parent)))
    zstore.update_store_metadata(path, status="complete")
    return path


# ------------------------------------------------------------------------------------------------------ local servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", url, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def wait_for(port: int, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _, _ = get(port, path)
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no server answered {path} on port {port}")
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------------ resampling


NUMPY_PADDING = {
    "fill_zeros": dict(mode="constant", constant_values=0),
    "fill_ones": dict(mode="constant", constant_values=1),
    "edge_repeat": dict(mode="edge"),
    "mirror_edge": dict(mode="reflect"),
    "wrap_around": dict(mode="wrap"),
}


def pillow_resized(hwc: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic: uint8 RGB as one Pillow image (ViRelAy's way), anything else one channel at a time, as 32-bit float
    for non-uint8 values (cast back; integers rounded)."""
    from PIL import Image

    if hwc.dtype == np.uint8 and hwc.shape[2] == 3:
        return np.asarray(Image.fromarray(hwc).resize((width, height), Image.Resampling.BICUBIC))
    planes = []
    for c in range(hwc.shape[2]):
        plane = hwc[..., c] if hwc.dtype == np.uint8 else hwc[..., c].astype(np.float32)
        planes.append(np.asarray(Image.fromarray(plane).resize((width, height), Image.Resampling.BICUBIC)))
    return np.stack(planes, axis=-1).astype(hwc.dtype)


def virelay_resampled(hwc: np.ndarray, width: int, height: int, up: str, down: str) -> np.ndarray:
    """ViRelAy's resampling of an (H, W, C) image, with height on axis 0: padded (the odd pixel before) or resized to
    at least width x height when smaller, then center-cropped (the odd pixel cut before) or resized when larger."""
    h, w = hwc.shape[:2]
    if (h < height or w < width) and up != "none":
        if up == "resize":
            hwc = pillow_resized(hwc, width, height)
        else:
            pad_y, pad_x = max(0, height - h), max(0, width - w)
            hwc = np.pad(hwc, ((math.ceil(pad_y / 2), pad_y // 2), (math.ceil(pad_x / 2), pad_x // 2), (0, 0)),
                         **NUMPY_PADDING[up])
    h, w = hwc.shape[:2]
    if (h > height or w > width) and down != "none":
        if down == "resize":
            hwc = pillow_resized(hwc, width, height)
        else:
            top, left = math.ceil(max(0, h - height) / 2), math.ceil(max(0, w - width) / 2)
            hwc = hwc[top:top + height, left:left + width]
    return hwc
