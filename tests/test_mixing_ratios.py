"""Ratio tables: what a user's YAML may say, and what it must not slip past."""
from __future__ import annotations

import pyarrow as pa
import pytest

from mixing.ratios import load_ratios
from pipeline.config import ConfigError


def _load(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return load_ratios(path)


def test_an_unquoted_yaml_boolean_key_is_refused_not_renamed(tmp_path):
    # YAML 1.1 reads `no` (Norwegian) as False: it used to load as the language "False", with no data.
    with pytest.raises(ConfigError, match=r"languages: key False is not a name; quote it"):
        _load(tmp_path, "categories: {web: 1}\nlanguages: {en: 1, no: 1}\ncode_languages: {Python: 1}\n")
    assert _load(tmp_path, 'categories: {web: 1}\nlanguages: {en: 1, "no": 1}\n').languages == {"en": 0.5, "no": 0.5}


@pytest.mark.parametrize("code_languages", ["", "code_languages: {}\n", "code_languages: {Python: 0}\n"])
def test_a_text_only_mix_needs_no_code_table(tmp_path, code_languages):
    ratios = _load(tmp_path, f"categories: {{web: 3, books: 1, code: 0}}\nlanguages: {{en: 1}}\n{code_languages}")
    assert ratios.categories["code"] == 0 and ratios.code_languages == {}


def test_a_drawn_table_is_still_required(tmp_path):
    with pytest.raises(ConfigError, match="missing table 'code_languages'"):
        _load(tmp_path, "categories: {web: 1, code: 1}\nlanguages: {en: 1}\n")
    with pytest.raises(ConfigError, match="code_languages: shares sum to zero"):
        _load(tmp_path, "categories: {web: 1, code: 1}\nlanguages: {en: 1}\ncode_languages: {Python: 0}\n")
    assert _load(tmp_path, "categories: {code: 1}\ncode_languages: {Go: 1}\n").languages == {}  # code only


@pytest.mark.parametrize("header, message", [("sequence_length: abc", "sequence_length: expected a positive integer"),
                                             ("vocab_size: -5", "vocab_size: expected a positive integer")])
def test_header_fields_are_checked(tmp_path, header, message):
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, f"{header}\ncategories: {{web: 1}}\nlanguages: {{en: 1}}\n")


def test_a_text_only_mix_plans_and_reports(tmp_path):
    from mixing.planner import plan_mix
    from mixing.report import write_report
    from mixing.stats import cleaned_stats

    ratios = _load(tmp_path, "categories: {web: 3, books: 1}\nlanguages: {en: 1, de: 1}\n")
    plan = plan_mix({("web", "en"): 3000, ("web", "de"): 3000, ("books", "en"): 1000, ("books", "de"): 1000},
                    ratios, max_epochs=1.0)
    assert plan.total_tokens == pytest.approx(8000) and plan.shares("code_languages") == {}
    counts = pa.table({"category": ["web", "books"], "key": ["en", "de"], "n": [30, 10]})
    report = write_report(cleaned_stats(counts, ratios, "chars", None), tmp_path / "report")
    assert (tmp_path / "report" / "code_languages.png").exists() and report["html"]
