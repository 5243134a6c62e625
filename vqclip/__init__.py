"""vqclip: text-to-image by VQGAN+CLIP latent optimisation.

The public API:
    generate(config, models=None, callbacks=(), progress=True, save=True) -> GenerationResult
    GenerateConfig, load_config(files, overrides, prompts)
    load_vqgan(config_path, checkpoint_path), load_clip(model, pretrained), load_models(config)
"""
__version__ = "0.1.0"

from vqclip.config import GenerateConfig, load_config  # noqa: E402
from vqclip.errors import VQClipError  # noqa: E402
from vqclip.generate import GenerationResult, Models, generate, load_models  # noqa: E402
from vqclip.models.clip import load_clip  # noqa: E402
from vqclip.models.vqgan import load_vqgan  # noqa: E402

__all__ = ["__version__", "generate", "GenerateConfig", "GenerationResult", "Models", "load_config",
           "load_models", "load_vqgan", "load_clip", "VQClipError"]
