"""The decision rule over lid.176 top-k output: aliases, weights, markers, thresholds, storage."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.langid_rules import LangIdRules, target_languages

L = "__label__"


def rules(**kw) -> LangIdRules:
    return LangIdRules(languages=["id", "ms", "no", "da", "iw"], aliases={"he": "iw", "nn": "no"}, **kw)


def decide(r: LangIdRules, preds, texts=None, threshold=0.0):
    probs = r.probabilities(preds)
    markers = r.marker_matrix(texts, probs) if texts else None
    choice, score = r.decide(probs, markers, threshold)
    return list(r.classes[choice]), score


def test_target_languages_are_the_41_of_the_ratio_table():
    langs = target_languages()
    assert len(langs) == 41 and "iw" in langs and "no" in langs and "he" not in langs


def test_shipped_rules_cover_the_41_languages():
    shipped = LangIdRules.load()
    assert shipped.languages == list(target_languages())
    assert shipped.aliases["he"] == "iw"


def test_aliases_are_summed_and_non_targets_go_to_other():
    r = rules()
    probs = r.probabilities([((L + "he",), (0.9,)), ((L + "no", L + "nn", L + "da"), (0.3, 0.3, 0.4)),
                             ((L + "hr", L + "id"), (0.8, 0.1))])
    assert probs.shape == (3, 6)
    assert probs[1, r.languages.index("no")] == pytest.approx(0.6)
    assert probs[2, -1] == pytest.approx(0.9)  # hr plus the mass top-k did not return
    langs, score = r.decide(probs)
    assert list(r.classes[langs]) == ["iw", "no", "other"]
    assert score[1] == pytest.approx(0.6)


def test_weights_settle_a_confusable_pair():
    pred = [((L + "id", L + "ms"), (0.6, 0.35))]
    assert decide(rules(), pred)[0] == ["id"]
    assert decide(rules(weights={"ms": 2.0}), pred)[0] == ["ms"]


def test_markers_apply_only_when_the_text_shows_them():
    r = rules(markers={"ms": r"\bkerana\b"}, marker_weights={"ms": 4.0})
    pred = [((L + "id", L + "ms"), (0.6, 0.35))] * 2
    langs, _ = decide(r, pred, ["ini kerana hujan", "ini karena hujan"])
    assert langs == ["ms", "id"]


def test_thresholds_send_unsure_answers_to_other_with_the_other_mass_as_score():
    pred = [((L + "da",), (0.45,)), ((L + "da",), (0.9,))]
    langs, score = decide(rules(thresholds={"da": 0.5}), pred)
    assert langs == ["other", "da"]
    assert score[0] == pytest.approx(0.55)
    assert decide(rules(), pred, threshold=0.95)[0] == ["other", "other"]  # global floor


def test_top_k_limits_what_is_read():
    pred = [((L + "hr", L + "ms"), (0.45, 0.40))]
    assert decide(rules(weights={"ms": 2.0}), pred)[0] == ["ms"]
    assert decide(rules(weights={"ms": 2.0}, top_k=1), pred)[0] == ["other"]


def test_save_load_round_trip_is_byte_stable(tmp_path):
    r = rules(weights={"ms": 2.0}, thresholds={"da": 0.25}, markers={"no": "(?i)\\bav\\b"})
    r.save(tmp_path / "a.json")
    LangIdRules.load(tmp_path / "a.json").save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert LangIdRules.load(tmp_path / "a.json").weights == {"ms": 2.0}


@pytest.mark.parametrize("kw,message", [
    (dict(weights={"xx": 2.0}), "weights.xx"),
    (dict(weights={"ms": 0.0}), "weights.ms"),
    (dict(thresholds={"ms": 1.5}), "thresholds.ms"),
    (dict(markers={"ms": "("}), "markers.ms"),
    (dict(top_k=0), "top_k"),
])
def test_bad_rules_are_rejected_naming_the_field(kw, message):
    with pytest.raises(ConfigError, match=message):
        rules(**kw)


def test_bad_rules_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        LangIdRules.load(bad)
    bad.write_text('{"languages": ["en"], "colour": 1}')
    with pytest.raises(ConfigError, match="colour"):
        LangIdRules.load(bad)


def test_pruned_marker_search_gives_the_same_decisions():
    rng = np.random.default_rng(0)
    r = rules(markers={"ms": "k", "id": "a", "no": "x"}, marker_weights={"ms": 3.0, "no": 0.5}, weights={"da": 2.0})
    words = ["kaki", "xa", "ok", "axe", "boo", "k x", "lima"]
    texts = [" ".join(rng.choice(words, 3)) for _ in range(400)]
    probs = rng.dirichlet(np.ones(6) * 0.3, size=400)
    full = r.marker_matrix(texts)
    pruned = r.marker_matrix(texts, probs)
    assert (r.decide(probs, full)[0] == r.decide(probs, pruned)[0]).all()
    assert pruned.sum() < full.sum()  # and it did skip work
