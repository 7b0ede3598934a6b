"""Explanations: class activation maps, Grad-CAM, map-to-box and overlays."""
