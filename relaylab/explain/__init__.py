"""Explain: models, attribution (zennit LRP, Grad-CAM/LayerCAM), activation and prediction jobs over whole datasets."""
