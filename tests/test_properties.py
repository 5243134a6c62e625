"""Property-based: any string given to the prompt parser or the config loader gives a valid result or
the one clear error (ConfigError), never a traceback of another kind."""
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqclip.config import GenerateConfig, from_yaml_text, iter_fields, load_config, validate
from vqclip.errors import ConfigError
from vqclip.prompts import MAX_ABS_WEIGHT, split_prompts

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that the syntax gives meaning to, mixed with anything at all.
_TOKENS = st.sampled_from([":", "|", "^", " ", "0", "1", "-1", "0.5", "1e9", "nan", "inf", "-inf", "e", ".", "a",
                           "http://x/y.png", "C:\\p\\c.png", "\n", "\t", "\x00", "é", "["])
_PROMPT = st.one_of(st.text(max_size=40), st.lists(_TOKENS, max_size=12).map("".join))


@FAST
@given(st.lists(_PROMPT, max_size=4))
def test_prompt_parser_gives_valid_prompts_or_config_error(specs):
    try:
        parsed = split_prompts(specs)
    except ConfigError as exc:
        assert str(exc).startswith("prompt ") and "\n" not in str(exc)  # one line, naming the prompt
        return
    assert len(parsed) >= len(specs)
    for p in parsed:
        assert p.text.strip() and p.text == p.text.strip()
        assert math.isfinite(p.weight) and p.weight != 0 and abs(p.weight) <= MAX_ABS_WEIGHT
        assert not math.isnan(p.stop) and p.stop != math.inf


_KEYS = [key for key, _, _ in iter_fields()]
_VALUES = st.one_of(st.text(max_size=20), st.integers(-10**12, 10**12).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(str),
                    st.sampled_from(["null", "[]", "[1,2]", "[64,64]", "[-1,0]", "{a: 1}", "true", "${oc.env:HOME}",
                                     "${nope}", "'", "[", "]", "=", "1e400", ".nan", "~", "[a, b", "{"]))
_OVERRIDE = st.one_of(st.text(max_size=30), st.tuples(st.sampled_from(_KEYS + ["stepz", "a.b.c", "", "1x"]), _VALUES)
                      .map(lambda kv: f"{kv[0]}={kv[1]}"))


def _valid_or_config_error(build):
    try:
        cfg = build()
    except ConfigError as exc:
        assert str(exc).strip() and "\n" not in str(exc), str(exc)  # the one clear line
        return None
    assert isinstance(cfg, GenerateConfig)
    validate(cfg)  # a returned config always passes its own checks
    return cfg


@SLOW
@given(st.lists(_OVERRIDE, max_size=4))
def test_config_overrides_give_a_valid_config_or_config_error(overrides):
    _valid_or_config_error(lambda: load_config([], overrides))


_YAML = st.one_of(st.text(max_size=80),
                  st.lists(st.tuples(st.sampled_from(_KEYS + ["cutouts", "optim", "x", "1"]), _VALUES), max_size=4)
                  .map(lambda items: "\n".join(f"{k}: {v}" for k, v in items)),
                  st.sampled_from(["- a\n- b", "[1, 2]", "42", "null", "steps: [1", "a: b: c", "!!python/name:os.system",
                                   "steps: !!python/object/apply:os.system ['true']", "? [a]\n: 1", "&a [*a]",
                                   "size: &x [64, 64]\nsteps: *x", "\t steps: 3", "%YAML 9.9\n---\nsteps: 3"]))


@SLOW
@given(_YAML)
def test_yaml_files_give_a_valid_config_or_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "run.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    _valid_or_config_error(lambda: load_config([str(path)]))
    _valid_or_config_error(lambda: from_yaml_text(text))  # a run's saved config (resume, PNG metadata)
