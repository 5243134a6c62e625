"""NaN/inf faults, injected for real (a decoder hook, a gradient hook): restore, halve the lr once, then stop."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from vqclip import generate, load_config, load_models
from vqclip.cli import main
from vqclip.errors import NumericalError
from vqclip.generate import Run


def _nan_decoder_at(models, calls):
    """Make the decoder's output NaN on the given forward calls (0-based); returns the hook handle."""
    count = {"n": 0}

    def hook(module, inputs, output):
        n = count["n"]
        count["n"] += 1
        return output * float("nan") if n in calls else output
    return models.vqgan.decoder.register_forward_hook(hook)


def test_nan_loss_restores_the_last_good_latent_and_halves_the_lr_once(tiny_overrides, caplog):
    cfg = load_config([], tiny_overrides + ["optim.lr=0.2"], prompts=["x"])
    models = load_models(cfg)
    run = Run(cfg, models, torch.device("cpu"))
    for _ in range(3):
        run.step()
    handle = _nan_decoder_at(models, {1})  # the next-but-one forward: step 4's
    try:
        start_of_3 = run.z.detach().clone()
        first = run.step()  # step 3 is fine
        with caplog.at_level(logging.WARNING, logger="vqclip"):
            retry = run.step()  # step 4: NaN loss -> back to the start of step 3, halve the lr, retake it
    finally:
        handle.remove()
    assert "step 4: the loss is nan; went back to step 3" in caplog.text and "learning rate to 0.1" in caplog.text
    assert run.faults == 1 and run.opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert retry["step"] == 3 and run.step_index == 4 and len(run.losses) == 4 and all(np.isfinite(run.losses))
    torch.testing.assert_close(retry["image"], first["image"])  # the retaken step started from the same latent
    assert torch.isfinite(run.z).all() and not torch.equal(run.z, start_of_3)
    run.step()
    assert run.step_index == 5


def test_nan_latent_from_a_nan_gradient_is_caught_at_its_step(tiny_overrides):
    cfg = load_config([], tiny_overrides, prompts=["x"])
    run = Run(cfg, load_models(cfg), torch.device("cpu"))
    run.step()
    before = run.z.detach().clone()
    handle = run.z.register_hook(lambda grad: grad * float("inf"))  # the update turns the latent NaN
    with pytest.raises(NumericalError, match="step 1: the latent has NaN or inf"):
        run.step()  # fault 1 (retry has the same hook) -> fault 2 -> stop
    handle.remove()
    assert run.faults == 2 and torch.equal(run.z, before)  # the last good latent is kept


def test_second_fault_stops_with_exit_2_and_keeps_the_last_good_image(tiny_overrides, capsys, tmp_path):
    cfg = load_config([], tiny_overrides + ["steps=20", "output.save_every=1"], prompts=["x"])
    models = load_models(cfg)
    handle = _nan_decoder_at(models, {3, 9})  # faults at step 3 (retaken from 2), then at step 7
    try:
        with pytest.raises(NumericalError, match=r"step 7: the loss is nan.*from step 6.*last good image is .*image\.png"):
            generate(cfg, models=models, progress=False)
    finally:
        handle.remove()
    run_dir = next((tmp_path / "out").iterdir())
    img = Image.open(run_dir / "image.png")
    assert img.text["steps"] == "6" and np.asarray(img).std() > 0  # the latent of the last good step
    assert (run_dir / "state.pt").is_file() and not [p for p in run_dir.rglob("*") if ".tmp" in p.name]



def test_cli_second_fault_is_one_line_and_exit_2(tiny_overrides, capsys, tmp_path):
    from taming.modules.diffusionmodules.model import Decoder

    count = {"n": 0}

    def hook(module, inputs, output):  # every taming Decoder in the process: NaN on its 3rd and 4th call
        if not isinstance(module, Decoder):
            return output
        count["n"] += 1
        return output * float("nan") if count["n"] in (3, 4) else output
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        code = main(["x", *tiny_overrides, "-q"])
    finally:
        handle.remove()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 2, err  # the first fault's warning, then the one error line
    assert "halved the learning rate to 0.05" in err[0]
    assert err[1].startswith("vqclip: error: step 1: the loss is nan") and "optim.lr" in err[1]
    run_dir = next((tmp_path / "out").iterdir())
    assert Image.open(run_dir / "image.png").text["steps"] == "1"
