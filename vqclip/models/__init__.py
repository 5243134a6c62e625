"""Model loaders: VQGAN from taming files (vqgan.py), CLIP through open_clip (clip.py)."""
