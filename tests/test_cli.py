"""The command line, run in-process: end to end, --help, and one-line errors with exit code 2."""
import pytest
from PIL import Image

from vqclip.cli import main
from vqclip.config import iter_fields


def test_cli_end_to_end(tiny_overrides, capsys):
    code = main(["a red circle", *tiny_overrides, "output.video=true", "-q"])
    out = capsys.readouterr().out.split()
    assert code == 0
    png = [p for p in out if p.endswith("image.png")]
    assert len(png) == 1 and Image.open(png[0]).text["prompt"] == "a red circle"
    assert any(p.endswith("progress.mp4") for p in out) and any(p.endswith("config.yaml") for p in out)


def test_cli_yaml_config_and_prompt_replaces(tiny_overrides, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("prompts: [from yaml]\nsteps: 3\n")
    assert main(["--config", str(cfg), *tiny_overrides, "-q", "steps=2"]) == 0
    png = [p for p in capsys.readouterr().out.split() if p.endswith(".png")][0]
    assert Image.open(png).text["prompt"] == "from yaml" and Image.open(png).text["steps"] == "2"


def test_help_documents_every_option_and_key(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for key, _, _ in iter_fields():
        assert key in text
    for flag in ["--config", "--no-save", "--quiet", "--verbose", "models", "download"]:
        assert flag in text


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vqclip: error: ")
    return err[0]


def test_misspelt_key(capsys, tiny_overrides):
    assert main(["x", *tiny_overrides, "stepz=3"]) == 2
    assert "unknown config key 'stepz'" in _error(capsys)


def test_missing_checkpoint(capsys, tiny_overrides, tmp_path):
    args = [o for o in tiny_overrides if not o.startswith("vqgan.checkpoint")]
    assert main(["x", *args, f"vqgan.checkpoint={tmp_path / 'nope.ckpt'}"]) == 2
    assert "not found" in _error(capsys)


@pytest.mark.parametrize("key", ["clip.pretrained", "clip.model", "clip.extra"])
def test_missing_clip_files_fail_before_the_vqgan_loads(capsys, tiny_overrides, tmp_path, monkeypatch, key):
    import sys

    def no_vqgan(*args, **kwargs):
        raise AssertionError("the VQGAN was loaded before the missing CLIP file was found")

    monkeypatch.setattr(sys.modules["vqclip.generate"], "load_vqgan", no_vqgan)  # the module, not the function
    missing = tmp_path / ("nope.pt" if key == "clip.pretrained" else "nope.json")
    args = [o for o in tiny_overrides if not o.startswith(key + "=")]
    setting = f"clip.extra=[{{model: {missing}, pretrained: null}}]" if key == "clip.extra" else f"{key}={missing}"
    assert main(["x", *args, setting]) == 2
    message = _error(capsys)
    assert str(missing) in message
    expected = {"clip.pretrained": "CLIP weights file not found", "clip.model": "'clip.model'",
                "clip.extra": "'clip.extra[0].model'"}
    assert expected[key] in message


def test_corrupt_and_malicious_checkpoints(capsys, tiny_overrides, tmp_path):
    import os
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x80\x02garbage-garbage")
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "cb": Evil()}, evil)
    args = [o for o in tiny_overrides if not o.startswith("vqgan.checkpoint")]
    assert main(["x", *args, f"vqgan.checkpoint={bad}"]) == 2
    assert "corrupt" in _error(capsys)
    assert main(["x", *args, f"vqgan.checkpoint={evil}"]) == 2
    line = _error(capsys)
    assert "refused" in line and "system" in line
    assert "pwned" not in capsys.readouterr().out


def test_bad_yaml_and_bad_value(capsys, tmp_path, tiny_overrides):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("steps: [1\n")
    assert main(["x", "--config", str(cfg)]) == 2
    assert "line" in _error(capsys)
    assert main(["x", *tiny_overrides, "steps=abc"]) == 2
    assert "'steps'" in _error(capsys)


@pytest.mark.parametrize("key", ["vqgan.config", "vqgan.checkpoint", "clip.pretrained", "init_image", "--config"])
def test_a_missing_relative_path_names_the_folder_it_was_looked_up_from(capsys, tiny_overrides, tmp_path,
                                                                        monkeypatch, key):
    """Config files name model files relative to where vqclip runs: a run from another folder is told so."""
    relative = "checkpoints/shapes/missing.file"
    args = [o for o in tiny_overrides if not o.startswith(key + "=")]
    args = args + (["--config", relative] if key == "--config" else [f"{key}={relative}"])
    monkeypatch.chdir(tmp_path)
    assert main(["x", *args]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]  # after what loaded before it (the VQGAN)
    assert message.startswith("vqclip: error: ") and "not found" in message
    assert relative in message and f"current folder {tmp_path}" in message
