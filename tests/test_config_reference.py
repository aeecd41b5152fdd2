"""docs/config.md is the generated reference of every option: it must match the code."""

from pathlib import Path

from neurojepa.config import describe, markdown_reference
from neurojepa.pipeline import RunConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_reference_is_up_to_date():
    expected = markdown_reference(RunConfig, "Config reference: `neurojepa run`")
    assert DOC.read_text() == expected, "regenerate with: neurojepa config --markdown > docs/config.md"


def test_every_leaf_option_has_a_meaning():
    missing = [key for key, default, meaning in describe(RunConfig) if not meaning]
    assert missing == [], f"options without a '# comment' in their dataclass: {missing}"
