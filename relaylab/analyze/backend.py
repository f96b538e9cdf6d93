"""The array backend of the analysis steps: NumPy/SciPy on "cpu", CuPy/cupyx on "cuda".

The kNN search, the Laplacian and the eigensolver are written once against the namespace these functions return
(`xp.argpartition`, `xsp.csr_matrix`, `linalg.eigsh`, ...), so CPU tests exercise the same code the GPU runs.
CuPy is imported only when a step asks for "cuda", so the CPU install never needs it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from ..compute import device_kind, gpu_index


def _cupy(device: str = "cuda"):
    """CuPy, with the GPU of `device` ("cuda:N") made the current one."""
    try:
        import cupy
    except ImportError as error:  # also raised by CuPy when its CUDA libraries are missing
        raise RuntimeError(f"device='{device}' needs the package cupy, which is not importable ({error}); "
                           "install it with the relaylab[gpu] extra: pip install 'relaylab[gpu]'") from error
    cupy.cuda.Device(gpu_index(device)).use()
    return cupy


def array_namespace(device: str = "cpu"):
    """numpy for "cpu", cupy for "cuda" / "cuda:N"."""
    return np if device_kind(device) == "cpu" else _cupy(device)


def sparse_namespace(device: str = "cpu"):
    """scipy.sparse for "cpu", cupyx.scipy.sparse for "cuda"."""
    if device_kind(device) == "cpu":
        return scipy.sparse
    _cupy(device)
    import cupyx.scipy.sparse

    return cupyx.scipy.sparse


def linalg_namespace(device: str = "cpu"):
    """scipy.sparse.linalg for "cpu", cupyx.scipy.sparse.linalg for "cuda" (eigsh, lobpcg)."""
    if device_kind(device) == "cpu":
        import scipy.sparse.linalg

        return scipy.sparse.linalg
    _cupy(device)
    import cupyx.scipy.sparse.linalg

    return cupyx.scipy.sparse.linalg


def to_device(x, device: str = "cpu"):
    """`x` (dense or SciPy/cupyx sparse) as an array of `device`; no copy when it is already there."""
    if device_kind(device) == "cpu":
        return to_numpy(x)
    cupy = _cupy(device)
    if scipy.sparse.issparse(x):
        import cupyx.scipy.sparse

        return cupyx.scipy.sparse.csr_matrix(x.tocsr())
    return cupy.asarray(x)


def to_numpy(x):
    """`x` as a NumPy array (or SciPy sparse matrix), copying it from the GPU when it is there."""
    if isinstance(x, np.ndarray) or scipy.sparse.issparse(x):
        return x
    if hasattr(x, "get") and type(x).__module__.startswith(("cupy", "cupyx")):
        return x.get()  # cupy.ndarray.get() -> numpy; cupyx sparse .get() -> scipy.sparse
    return np.asarray(x)
