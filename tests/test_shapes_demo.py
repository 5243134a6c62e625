"""The bundled shapes demo: its shipped weights load through the real loaders and generate offline."""
from pathlib import Path

from PIL import Image

from vqclip import generate, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_shapes_config_generates_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository, as in the README
    total = sum(p.stat().st_size for p in (ROOT / "checkpoints" / "shapes").iterdir())
    assert total < 30 * 2**20
    cfg = load_config(["configs/shapes.yaml"], ["steps=10", "seed=0", f"output.dir={tmp_path}"],
                      prompts=["a red circle on a blue background"])
    result = generate(cfg, progress=False)
    image = Image.open(result.run_dir / "image.png")
    assert image.size == (128, 128)
