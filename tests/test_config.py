"""Config: defaults, YAML merge, dotlist overrides, and one clear error for each bad input."""
import pytest

from vqclip.config import AUGMENTS, GenerateConfig, apply_overrides, iter_fields, load_config, to_yaml, from_yaml_text
from vqclip.cutouts import build_augments
from vqclip.errors import ConfigError


def test_defaults_and_required_keys_exist():
    keys = {k for k, _, _ in iter_fields()}
    for key in ["prompts", "image_prompts", "init_image", "init_weight", "seed", "size", "steps", "vqgan.config",
                "vqgan.checkpoint", "clip.model", "clip.pretrained", "optim.name", "optim.lr", "cutouts.cutn",
                "cutouts.cut_pow", "cutouts.augments", "output.dir", "output.save_every", "output.video", "device"]:
        assert key in keys
    assert all(help_text for _, help_text, _ in iter_fields())
    cfg = load_config()
    assert isinstance(cfg, GenerateConfig) and cfg.size == [256, 256]


def test_yaml_then_overrides_then_prompt(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("steps: 10\nprompts: [from yaml]\ncutouts:\n  cutn: 4\n")
    b = tmp_path / "b.yaml"
    b.write_text("steps: 20\n")
    cfg = load_config([str(a), str(b)], ["size=[512,384]", "optim.lr=0.05"])
    assert (cfg.steps, cfg.cutouts.cutn, cfg.size, cfg.optim.lr, cfg.prompts) == (20, 4, [512, 384], 0.05, ["from yaml"])
    cfg = load_config([str(a)], ["seed=7"], prompts=["from cli"])
    assert cfg.prompts == ["from cli"] and cfg.seed == 7


def test_yaml_roundtrip():
    cfg = load_config([], ["seed=3", "prompts=[a,b]", "cutouts.augments=[flip]"])
    assert from_yaml_text(to_yaml(cfg)) == cfg


@pytest.mark.parametrize("override, words", [
    ("stepz=5", "unknown config key 'stepz'"),
    ("cutouts.cutm=5", "unknown config key 'cutouts.cutm'"),
    ("steps=many", "'steps'"),
    ("steps=0", "'steps'.*positive"),
    ("steps=-3", "'steps'"),
    ("size=[0,64]", "'size'"),
    ("size=[64]", "'size'"),
    ("optim.name=lbfgs", "'optim.name'.*adam"),
    ("optim.lr=nan", "optim.lr"),
    ("init_weight=inf", "init_weight"),
    ("cutouts.augments=[spin]", "'cutouts.augments'.*flip"),
    ("cutouts.cutn=0", "cutouts.cutn"),
    ("device=tpu", "'device'"),
    ("output.fps=0", "output.fps"),
    ("vqgan.config=a.yaml", "together"),
    ("steps", "key=value"),
    ("prompts={a:1}", "'prompts' in overrides: a mapping; allowed: a list"),
    ("size={w:64}", "'size' in overrides: a mapping; allowed: a list"),
    ("cutouts.augments={flip:1}", "'cutouts.augments'.*a list"),
    # omegaconf's own wording names neither the value nor the type; ours names both
    ("steps=abc", "'steps': 'abc'; allowed: an integer$"),
    ("seed=1.5", "'seed': 1.5; allowed: an integer or null$"),
    ("channels_last=maybe", "'channels_last': 'maybe'; allowed: true, false or null$"),
    ("size=128", "'size': 128; allowed: a list of integers$"),
    ("size=[a,64]", r"'size\[0\]': 'a'; allowed: an integer$"),
    ("prompts=", r"'prompts': nothing \(null\); allowed: a list of text values$"),
    ("cutouts.augments=flip", "'cutouts.augments': 'flip'; allowed: a list of text values$"),
    ("cutouts=[1]", r"'cutouts' in overrides: a list; allowed: a section of keys \(cutn, .*cutouts.KEY=VALUE$"),
    ("optim=adam", r"'optim' in overrides: a single value; allowed: a section of keys \(name, lr, .*optim.KEY=VALUE$"),
    ("clip.extra=3", r"'clip.extra': 3; allowed: a list of sections \(each with keys model, pretrained, weight\)$"),
    ("story.scenes=[1]", r"'story.scenes\[0\]': 1; allowed: a section with keys prompts, steps, start$"),
    ("clip.extra=[{model: x, weight: abc}]", "'weight' in an item of clip.extra: 'abc'; allowed: a number$"),
])
def test_bad_overrides(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config([], [override])


def test_bad_yaml_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 10\nsize: [64, 64\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+"):
        load_config([str(bad)])
    with pytest.raises(ConfigError, match="not found"):
        load_config([str(tmp_path / "missing.yaml")])
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config([str(listy)])


def test_mapping_where_a_list_goes_names_the_key_and_file(tmp_path):
    # omegaconf reports this merge as a bare TypeError, with no key
    bad = tmp_path / "run.yaml"
    bad.write_text("steps: 10\nclip:\n  extra: {model: x}\n")
    with pytest.raises(ConfigError, match=rf"'clip.extra' in config file {bad}: a mapping; allowed: a list"):
        load_config([str(bad)])
    with pytest.raises(ConfigError, match="'prompts' in the saved config: a mapping; allowed: a list"):
        from_yaml_text("prompts: {a: 1}\n")
    with pytest.raises(ConfigError, match="'size' in overrides: a mapping; allowed: a list"):
        apply_overrides(load_config([]), ["size={w:64}"])
    section = tmp_path / "section.yaml"
    section.write_text("optim: adam\n")
    with pytest.raises(ConfigError, match=rf"'optim' in config file {section}: a single value; allowed: a section"):
        load_config([str(section)])
    good = tmp_path / "good.yaml"
    good.write_text("prompts: [a red circle]\n")
    assert load_config([str(good)]).prompts == ["a red circle"]


def test_every_augment_name_builds():
    pipeline = build_augments(list(AUGMENTS), cut_size=32)
    assert len(pipeline) == len(AUGMENTS)
