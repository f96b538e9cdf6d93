"""The artifact's direction in a layer's activations: a concept activation vector (CAV) learned with a linear model,
artifact samples against the rest of their category.

A linear classifier's weights (the *filter*) separate the two groups but also point away from directions of noise
that correlate with the artifact; the direction the artifact actually moves activations along is the *pattern*
(Haufe et al. 2014, "On the interpretation of weight vectors of linear models in multivariate neuroimaging"), for a
binary concept the covariance of the activations with the concept label, cov(x, t) / var(t): the difference of the
two groups' mean activations. Pahde et al. (2022, "Navigating neural space: revisiting concept activation vectors to
overcome directional divergence") show this pattern CAV is the better direction for ClArC: projecting out the filter
also removes variance the model uses for the class itself. `method="pattern"` (the default) returns it, `"filter"`
the classifier's weights (in the raw activation space).
The classifier is scikit-learn's `LogisticRegression`; its held-out accuracy (stratified k-fold) says whether the
layer separates the artifact at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("pattern", "filter")


@dataclass
class CAV:
    """A unit direction in a layer's (flattened) activation space, where the clean samples sit on average
    (`reference`, the point P-ClArC projects onto), and how well a linear model separates the artifact there."""

    direction: np.ndarray
    reference: np.ndarray
    accuracy: float
    method: str
    n_artifact: int
    n_clean: int


def learn_cav(activations: np.ndarray, artifact: np.ndarray, *, method: str = "pattern", folds: int = 5,
              random_state: int = 0) -> CAV:
    """The CAV of `artifact` (bool per sample) in `activations` (n, ...), flattened per sample."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    x = np.asarray(activations, dtype=np.float64).reshape(len(activations), -1)
    y = np.asarray(artifact, dtype=bool)
    if y.shape != (len(x),):
        raise ValueError(f"artifact must be one bool per sample ({len(x)}), got shape {y.shape}")
    n_artifact, n_clean = int(y.sum()), int((~y).sum())
    if n_artifact < 2 or n_clean < 2:
        raise ValueError(f"a CAV needs at least 2 artifact and 2 other samples, got {n_artifact} and {n_clean}")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced"))
    k = max(2, min(folds, n_artifact, n_clean))
    accuracy = float(cross_val_score(model, x, y, cv=StratifiedKFold(k, shuffle=True, random_state=random_state),
                                     scoring="balanced_accuracy").mean())
    model.fit(x, y)
    scaler, linear = model[0], model[1]
    filter_ = linear.coef_[0] / np.where(scaler.scale_ > 0, scaler.scale_, 1.0)  # weights in the raw activation space
    if method == "filter":
        direction = filter_
    else:  # the pattern: cov(x, t) / var(t) = mean(x | artifact) − mean(x | rest)
        direction = x[y].mean(axis=0) - x[~y].mean(axis=0)
    norm = np.linalg.norm(direction)
    if not norm > 0:
        raise ValueError("the artifact and the other samples have identical activations: no direction to learn")
    direction = direction / norm
    if direction @ (x[y].mean(axis=0) - x[~y].mean(axis=0)) < 0:  # pointing from the clean samples to the artifact
        direction = -direction
    return CAV(direction=direction.astype(np.float32), reference=x[~y].mean(axis=0).astype(np.float32), accuracy=accuracy,
               method=method, n_artifact=n_artifact, n_clean=n_clean)
