"""Poisoned digits for the poisoning benchmark: scikit-learn's bundled digits (no download) as 16×16 RGB images, six
kinds of artifact, stamped on a fraction of one class ("artifact" poisoning, as in the SpRAy papers' Clever-Hans
setting) or on other classes' samples relabelled to the target class ("backdoor" poisoning); a small CNN trained on
them, and LRP heatmaps of its decisions (zennit's EpsilonPlusFlat, the composite the SpRAy papers use for CNNs).

Only the standard library is imported at module level (the suite runner's rule); the heavy imports are inside.
"""

from __future__ import annotations

from dataclasses import dataclass

SIDE = 16
INK = 0.6  # brightest digit pixel: the artifacts may be brighter (a patch) or fainter (a line, a pattern)
ARTIFACTS = ("patch", "frame", "line", "checker", "tint", "pattern")


def artifact_layer(kind: str, side: int = SIDE):
    """(mask, value) of an artifact: (1, side, side) mask of where it is drawn (may be fractional: blended), (3, side,
    side) what is drawn there. Stamping: x ← x · (1 − mask) + value · mask."""
    import numpy as np

    mask = np.zeros((1, side, side), np.float32)
    value = np.zeros((3, side, side), np.float32)
    if kind == "patch":  # a bright square in the top-left corner
        mask[:, 0:4, 0:4], value[:] = 1.0, 1.0
    elif kind == "frame":  # a hollow frame around the image
        mask[:, [0, -1], :], mask[:, :, [0, -1]] = 1.0, 1.0
        value[:] = 0.8
    elif kind == "line":  # a thin, faint horizontal line near the bottom
        mask[:, side - 3, 2:side - 2] = 1.0
        value[:] = 0.3
    elif kind == "checker":  # a 4×4 checkerboard trigger in the bottom-right corner (BadNets-like)
        yy, xx = np.mgrid[0:4, 0:4]
        mask[:, side - 4:, side - 4:] = 1.0
        value[:, side - 4:, side - 4:] = ((yy + xx) % 2).astype(np.float32)
    elif kind == "tint":  # a colour tint of the whole image: red up, blue down
        mask[:] = 0.35
        value[0], value[1], value[2] = 1.0, 0.0, 0.0
    elif kind == "pattern":  # a low-contrast diagonal stripe pattern over the whole image
        yy, xx = np.mgrid[0:side, 0:side]
        mask[:] = 0.15
        value[:] = (((yy + xx) // 2) % 2).astype(np.float32)
    else:
        raise ValueError(f"unknown artifact {kind!r}; expected one of {', '.join(ARTIFACTS)}")
    return mask, value


def stamp(images, kind: str):
    """`images` (n, 3, side, side) in [0, 1] with the artifact drawn in (`relaylab.fix.verify.paste`)."""
    from relaylab.fix.verify import paste

    mask, value = artifact_layer(kind, images.shape[-1])
    return paste(images, value, mask)


def digits(classes: tuple[int, ...] | None = None):
    """(images (n, 3, SIDE, SIDE) float32 in [0, INK], labels (n,) 0..len(classes)-1) of the chosen digit classes."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = np.isin(data.target, classes) if classes is not None else np.ones(len(data.target), bool)
    images = data.images[keep].astype(np.float32) / 16.0 * INK
    images = np.kron(images, np.ones((2, 2), np.float32))[:, None].repeat(3, axis=1)  # 8×8 → 16×16, grey RGB
    labels = data.target[keep]
    if classes is not None:
        labels = np.searchsorted(np.sort(np.asarray(classes)), labels)
    return images, labels.astype(np.int64)


@dataclass
class Poisoned:
    """A poisoned (or clean, prevalence 0) data set split into training and test samples."""

    x_train: object
    y_train: object
    poison_train: object  # bool (n_train,): carries the artifact
    x_test: object
    y_test: object
    target: int
    kind: str
    attack: str
    prevalence: float


def poison(images, labels, *, target: int, kind: str, attack: str, prevalence: float, seed: int, test_fraction: float = 0.3):
    """Split, then poison the training part. "artifact": `prevalence` of the target class's samples get the artifact
    (labels unchanged, so the artifact is a shortcut to the class it co-occurs with). "backdoor": as many samples of
    the other classes as `prevalence` × the target class's size get the artifact and the target label. Test samples
    stay clean."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=test_fraction, random_state=seed, stratify=labels)
    x_train, y_train = x_train.copy(), y_train.copy()
    rng = np.random.default_rng(seed)
    marked = np.zeros(len(y_train), bool)
    in_target = np.flatnonzero(y_train == target)
    count = int(round(prevalence * len(in_target)))
    if count:
        if attack == "artifact":
            chosen = rng.choice(in_target, count, replace=False)
        elif attack == "backdoor":
            chosen = rng.choice(np.flatnonzero(y_train != target), count, replace=False)
            y_train[chosen] = target
        else:
            raise ValueError(f"unknown attack {attack!r}: artifact or backdoor")
        x_train[chosen] = stamp(x_train[chosen], kind)
        marked[chosen] = True
    return Poisoned(x_train, y_train, marked, x_test, y_test, target, kind, attack, prevalence)


def project_images(path: str, max_side: int = 32, classes: tuple[int, ...] | None = None):
    """(images (n, 3, s, s) float32 in [0, INK], labels (n,) 0..k-1) of a ViRelAy or relaylab project's inputs (opened
    with relaylab), scaled from their value range, grey → RGB, resized (area) to at most `max_side` and cropped square."""
    import numpy as np
    import torch

    from relaylab.data.project import open_project

    with open_project(path, dask=False) as project:
        x = np.asarray(project.inputs["input"].values, dtype=np.float32)
        labels = np.asarray(project.inputs["label"].values)
        recorded = project.inputs.attrs.get("value_range")
    if labels.ndim != 1:
        raise SystemExit(f"{path}: the poisoning benchmark needs one label per sample, not multi-label data")
    low, high = recorded if recorded is not None else (float(x.min()), float(x.max()))
    x = (x - low) / max(high - low, 1e-12)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    x = x[:, :3]
    side = min(x.shape[2], x.shape[3])
    x = x[:, :, :side, :side]
    if side > max_side:
        x = torch.nn.functional.interpolate(torch.as_tensor(x), size=(max_side, max_side), mode="area").numpy()
    keep = np.isin(labels, classes) if classes is not None else np.ones(len(labels), bool)
    values = np.unique(labels[keep])
    return (x[keep].clip(0, 1) * INK).astype(np.float32), np.searchsorted(values, labels[keep]).astype(np.int64)


def small_cnn(n_classes: int):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(4),  # 4×4 whatever the size (16²: MaxPool2d(2))
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, n_classes),
    )


def train(x, y, n_classes: int, seed: int, epochs: int = 30, batch: int = 64, lr: float = 3e-3):
    """The small CNN trained on (x, y) (relaylab's demo training loop: Adam, seeded), in eval mode."""
    import torch

    from relaylab.demo.model import fit

    return fit(lambda: small_cnn(n_classes), torch.as_tensor(x), torch.as_tensor(y), seed=seed, epochs=epochs, batch_size=batch, lr=lr)


def predict(model, x, batch: int = 512):
    import numpy as np
    import torch

    with torch.no_grad():
        return np.concatenate([model(torch.as_tensor(x[i:i + batch])).argmax(1).numpy() for i in range(0, len(x), batch)])


def accuracy(model, x, y) -> float:
    return float((predict(model, x) == y).mean())


def flip_rate(model, x, y, target: int, kind: str) -> float:
    """Share of the samples of other classes (correctly classified without it) that the artifact turns into `target`
    (`relaylab.fix.verify.flip_rate` with this kind of artifact)."""
    from relaylab.fix import verify

    mask, value = artifact_layer(kind, x.shape[-1])
    return verify.flip_rate(lambda images: predict(model, images), x, y, target, value, mask)


def lrp(model, x, y, batch: int = 256):
    """LRP heatmaps (n, 3, side, side) of each sample's label: zennit's EpsilonPlusFlat composite."""
    import numpy as np
    import torch
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    out = []
    with Gradient(model=model, composite=EpsilonPlusFlat()) as attributor:
        for i in range(0, len(x), batch):
            xs = torch.as_tensor(x[i:i + batch]).requires_grad_(True)
            ys = torch.as_tensor(y[i:i + batch])
            _, relevance = attributor(xs, torch.eye(model[-1].out_features)[ys])
            out.append(relevance.detach().numpy())
    return np.concatenate(out).astype(np.float32)
