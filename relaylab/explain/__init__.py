"""Explain: models, attribution (zennit LRP, Grad-CAM/LayerCAM), activation and prediction jobs over whole datasets."""

# the per-channel normalisation torchvision's ImageNet models were trained with (RGB, inputs scaled to [0, 1]):
# the default of `ingest` (recorded in the store) and of torchvision model specs
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
