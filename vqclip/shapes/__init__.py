"""The shapes world: a tiny captioned world of coloured shapes, its evaluator and its demo models.

- `vqclip.shapes.world`: palette, caption grammar, drawing, dataset, held-out combinations.
- `vqclip.shapes.evaluate`: reads an image back into (color, shape, background) without a network.
- `vqclip.shapes.train`: trains the tiny VQGAN and CLIP (imported on demand: it needs Lightning).
- `vqclip.shapes.negatives`, `vqclip.shapes.harden`: images that are not scenes, and an experimental
  fine-tuning of the CLIP against the generator's failures.
- `vqclip.shapes.quality`, `vqclip.shapes.oracle`: the success-rate benchmark, and the same
  optimisation guided by pixels instead of CLIP.
"""
from vqclip.shapes.evaluate import Reading, read_image
from vqclip.shapes.world import (COLORS, HELD_OUT, PALETTE, SHAPES, Scene, ShapesDataset, all_captions,
                                 all_scenes, draw, format_caption, parse_caption, train_scenes)

__all__ = ["COLORS", "HELD_OUT", "PALETTE", "SHAPES", "Reading", "Scene", "ShapesDataset", "all_captions",
           "all_scenes", "draw", "format_caption", "parse_caption", "read_image", "train_scenes"]
