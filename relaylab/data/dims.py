"""The canonical dimension names every source is presented with (see schemas/README.md, "The canonical data model").

Readers (HDF5, image folders, the Zarr store) and writers import them from here, so a name is spelled once.
"""

SAMPLE, CHANNEL, Y, X = "sample", "channel", "y", "x"
IMAGE_DIMS = (SAMPLE, CHANNEL, Y, X)
CLASS = "class"  # the model's output index: label maps, predictions, multi-label (n-hot) labels
MEMBER, COMPONENT = "member", "component"  # an analysis category's samples; an embedding's coordinates

__all__ = ["SAMPLE", "CHANNEL", "Y", "X", "IMAGE_DIMS", "CLASS", "MEMBER", "COMPONENT"]
