"""label_table / label_batch: the Arrow contract of the language-ID stage."""
from __future__ import annotations


import pyarrow as pa
import pytest

from pipeline.langid import LanguageIdentifier, _identifier, label_batch, label_table
from pipeline.config import ConfigError


@pytest.fixture(scope="module")
def identifier():
    return LanguageIdentifier()


def docs(**extra) -> pa.Table:
    base = {
        "id": ["a", "b", "c", "d", "e"],
        "text": ["Die Katze schläft auf dem Sofa, während wir das Abendessen kochen.",
                 "def main():\n    print('hi')\n",
                 "Kot śpi na kanapie, a my gotujemy obiad.\nDrugi wiersz też jest po polsku.",
                 "#include <stdio.h>\nint main(void) { return 0; }\n",
                 "   "],
        "category": ["web", "code", "books", "code", "web"],
        "source": ["s"] * 5,
        "position": [0, 1, 2, 3, 4],
    }
    base.update(extra)
    return pa.table(base)


def test_labels_text_rows_and_gives_code_rows_a_code_lang(identifier):
    out = label_table(docs(code_lang=[None, "py", None, None, None], path=[None, "x/y.txt", None, "m.c", None]),
                      identifier)
    assert out.column_names[:5] == ["id", "text", "category", "source", "position"]
    assert out.schema.field("lang").type == pa.string()
    assert out.schema.field("lang_score").type == pa.float32()
    assert out.column("lang").to_pylist() == ["de", None, "pl", None, "other"]
    scores = out.column("lang_score").to_pylist()
    assert scores[1] is None and scores[3] is None and scores[0] > 0.5 and scores[4] == 0.0
    assert out.column("code_lang").to_pylist() == [None, "Python", None, "C", None]
    assert "path" in out.column_names  # passthrough columns stay


def test_code_lang_from_path_only_and_missing_columns(identifier):
    out = label_table(docs(path=[None, "a.rs", None, None, None]), identifier)
    assert out.column("code_lang").to_pylist() == [None, "Rust", None, "other", None]
    assert label_table(docs(), identifier).column("code_lang").to_pylist() == [None, "other", None, "other", None]


def test_dictionary_encoded_category_and_null_text(identifier):
    t = docs().set_column(2, "category", pa.array(["web", "code", "books", "code", "web"]).dictionary_encode())
    t = t.set_column(1, "text", pa.array([None, "x", "Ceci est une phrase en français, assez longue.", "y", "z"]))
    out = label_table(t, identifier)
    assert out.column("lang").to_pylist()[:3] == ["other", None, "fr"]


def test_missing_required_column_is_a_clear_error(identifier):
    with pytest.raises(ValueError, match="'category'"):
        label_table(docs().drop_columns(["category"]), identifier)


def test_label_batch_loads_the_model_once_per_process_and_labels_like_label_table(identifier):
    first = label_batch(docs(), threshold=0.1)
    assert first.equals(label_table(docs(), LanguageIdentifier(threshold=0.1)))
    before = _identifier.cache_info()
    label_batch(docs(), threshold=0.1)
    after = _identifier.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)  # the loaded model, reused


def test_label_batch_runs_in_ray_data_map_batches(ray_local):
    import ray

    ds = ray.data.from_arrow(docs()).repartition(2)
    rows = ds.map_batches(label_batch, fn_kwargs={"threshold": 0.0}, batch_format="pyarrow").take_all()
    rows.sort(key=lambda r: r["id"])
    assert [r["lang"] for r in rows] == ["de", None, "pl", None, "other"]
    assert [r["code_lang"] for r in rows] == [None, "other", None, "other", None]


def test_bad_model_and_threshold_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="langid.model"):
        LanguageIdentifier(model_path=tmp_path / "missing.bin")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ConfigError, match="langid.model"):
        LanguageIdentifier(model_path=junk)
    with pytest.raises(ConfigError, match="langid.threshold"):
        LanguageIdentifier(threshold=1.5)


def test_one_str_is_refused_rather_than_read_as_one_text_per_character(identifier):
    assert [lang for lang, _ in identifier.predict(["Guten Morgen, wie geht es dir heute?"])] == ["de"]
    with pytest.raises(TypeError, match=r"got one str: pass \[text\]"):
        identifier.predict("Guten Morgen, wie geht es dir heute?")
