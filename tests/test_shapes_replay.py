"""Races replayed from independent copies (vqclip.shapes.replay): the odds and the plumbing."""
import itertools
import json
import random

import pytest

from vqclip import load_config
from vqclip.shapes.replay import CopiesReport, Prompt, copies_report, merge_copies, race_odds, race_table
from vqclip.shapes.world import HELD_OUT


def _brute_force(right, score, k):
    """A race of k: draw k distinct copies at random, keep the lowest score (many draws)."""
    rng = random.Random(0)
    hits = 0
    for _ in range(20000):
        chosen = rng.sample(range(len(right)), k)
        hits += right[min(chosen, key=lambda i: score[i])]
    return hits / 20000


def test_race_odds_match_drawing_races_at_random():
    rng = random.Random(1)
    for n, k in [(8, 4), (6, 2), (5, 5), (4, 1)]:
        right = [rng.random() < 0.5 for _ in range(n)]
        score = [rng.random() for _ in range(n)]
        prompt = Prompt("seen", "a red circle on a blue background", 0, right, {25: score})
        assert race_odds(prompt, k, 25) == pytest.approx(_brute_force(right, score, k), abs=0.015)
        any_right = sum(any(right[i] for i in s) for s in itertools.combinations(range(n), k))
        assert race_odds(prompt, k) == any_right / len(list(itertools.combinations(range(n), k)))
    with pytest.raises(ValueError, match="k must lie in 1..4"):
        race_odds(Prompt("seen", "x", 0, [True] * 4, {}), 5)


def test_a_perfect_score_picks_right_whenever_a_copy_is_right():
    right = [False, True, False, False, True, False]
    perfect = [0.0 if r else 1.0 for r in right]  # every right copy scores lower than every wrong one
    worst = [1.0 - v for v in perfect]
    prompt = Prompt("seen", "x", 0, right, {10: perfect, 20: worst})
    for k in range(1, 7):
        assert race_odds(prompt, k, 10) == race_odds(prompt, k)
    assert race_odds(prompt, 5, 20) == 0.0 and race_odds(prompt, 5) == 1.0
    assert race_odds(prompt, 1, 10) == race_odds(prompt, 1) == pytest.approx(2 / 6)


def test_copies_report_runs_merges_and_tabulates(tiny_overrides, monkeypatch):
    import vqclip.shapes.quality as quality

    monkeypatch.setattr(quality, "HELD_OUT", HELD_OUT[:1])
    cfg = load_config([], tiny_overrides + ["steps=3", "race=2"])  # the replay turns the race off
    parts = [copies_report(cfg, copies=3, check_steps=[0, 2], n_seen=1, part=i, parts=2) for i in (0, 1)]
    assert [len(p.prompts) for p in parts] == [1, 1]
    merged = merge_copies([parts[1].to_json(), parts[0].to_json()])
    assert [p.split for p in merged.prompts] == ["seen", "held_out"]
    assert [p.seed for p in merged.prompts] == [1000, 1001]
    for p in merged.prompts:
        assert len(p.right) == 3 and sorted(p.scores) == [0, 2]
        assert all(len(v) == 3 and all(x == x for x in v) for v in p.scores.values())
        assert len(set(p.scores[0])) == 3  # three different starts, three different scores
    again = CopiesReport.from_json(merged.to_json())
    assert again == merged
    table = race_table(merged, [2, 4])
    assert "race of 2, picked at step 2" in table and "of 4" not in table  # only 3 copies were made
    one = sum(sum(p.right) / 3 for p in merged.prompts) / 2
    assert f"| one copy | {sum(merged.prompts[0].right) / 3:.1%} | {sum(merged.prompts[1].right) / 3:.1%} | {one:.1%} |" in table
    assert "| one copy | " + f"{sum(parts[0].prompts[0].right) / 3:.1%} | - |" in race_table(parts[0], [2])
    with pytest.raises(ValueError, match="check steps must lie in 0..2"):
        copies_report(cfg, copies=2, check_steps=[3], n_seen=1)
    with pytest.raises(ValueError, match="different settings"):
        other = json.loads(parts[0].to_json())
        other["config"]["copies"] = 4
        merge_copies([json.dumps(other), parts[1].to_json()])


def test_eval_script_copies_then_replay(tiny_overrides, tmp_path, monkeypatch, capsys):
    import sys

    import vqclip.shapes.quality as quality
    from tests.test_shapes_quality import _eval_script_main

    monkeypatch.setattr(quality, "HELD_OUT", HELD_OUT[:1])
    main = _eval_script_main()
    empty, out = tmp_path / "empty.yaml", tmp_path / "copies.json"
    empty.write_text("{}\n")
    monkeypatch.setattr(sys, "argv", ["eval_shapes.py", "--config", str(empty), "--copies", "2", "--check-steps", "1",
                                      "--n-seen", "1", "--json", str(out), *tiny_overrides, "steps=2"])
    assert main() == 0
    made = capsys.readouterr().out
    assert "race of 2, picked at step 1" in made and len(json.loads(out.read_text())["prompts"]) == 2
    monkeypatch.setattr(sys, "argv", ["eval_shapes.py", "--replay", str(out), "--race-sizes", "2"])
    assert main() == 0
    assert capsys.readouterr().out.strip() == made.strip()  # the same table, from the file


@pytest.mark.parametrize("args, words", [
    (["--copies", "0"], "--copies takes a number of copies of at least 1, got 0"),
    (["--copies", "2", "--part", "2/2"], "--part takes I/N with 0 <= I < N (e.g. 0/2), got '2/2'"),
    (["--copies", "2", "--part", "half"], "--part takes I/N"),
    (["--copies", "2", "--screen"], "--screen and --copies cannot be combined"),
    (["--oracle", "--merge", "a.json"], "--oracle and --merge cannot be combined"),
])
def test_eval_script_refuses_bad_copies_arguments(args, words, monkeypatch, capsys):
    import sys

    from tests.test_shapes_quality import _eval_script_main

    main = _eval_script_main()
    monkeypatch.setattr(sys, "argv", ["eval_shapes.py", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and words in capsys.readouterr().err
