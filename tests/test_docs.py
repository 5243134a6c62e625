"""The README tells the truth: every config key is documented, and CI runs the README's test command."""
from pathlib import Path

from vqclip.config import iter_fields

ROOT = Path(__file__).resolve().parents[1]


def test_readme_documents_every_config_key():
    readme = (ROOT / "README.md").read_text()
    missing = [key for key, _, _ in iter_fields() if f"`{key}`" not in readme]
    assert not missing, f"README config reference lacks {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest -q' in readme
    assert 'pip install -e ".[test]"' in ci and "python -m pytest -q" in ci


def test_registry_models_are_in_the_readme_table():
    from vqclip.registry import load_registry

    readme = (ROOT / "README.md").read_text()
    for name in load_registry():
        assert f"| `{name}` |" in readme


def test_reliability_doc_names_only_tests_that_exist():
    import re

    text = (ROOT / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(tests/test_\w+\.py)::(\w+)`", text)
    assert len(named) >= 40
    for path, name in named:
        source = (ROOT / path).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"docs/reliability.md names {path}::{name}, which does not exist"
    readme = (ROOT / "README.md").read_text()
    assert "docs/reliability.md" in readme
