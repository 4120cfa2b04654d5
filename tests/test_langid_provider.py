"""Prove the `fasttext` provider in this install: fasttext-predict, working under NumPy 2."""
from __future__ import annotations

import importlib.metadata

import numpy as np

from pipeline.langid import LanguageIdentifier, default_model_path


def test_fasttext_module_comes_from_fasttext_predict_only():
    providers = importlib.metadata.packages_distributions().get("fasttext", [])
    assert providers == ["fasttext-predict"], f"`fasttext` is installed by {providers}; exactly one must provide it"


def test_predict_str_returns_sane_labels_under_numpy2():
    import fasttext

    model = fasttext.load_model(default_model_path())
    labels, probs = model.predict("Dies ist ein ganz normaler deutscher Satz über das Wetter.", k=3)
    assert labels[0] == "__label__de"
    assert len(labels) == len(probs) == 3
    assert all(label.startswith("__label__") for label in labels)
    assert 0.5 < probs[0] <= 1.0001 and list(probs) == sorted(probs, reverse=True)
    assert int(np.__version__.split(".")[0]) >= 2  # the point: predict(str) works under NumPy 2


def test_identifier_answers_each_text_of_a_batch_independently():
    # fasttext-predict 0.9.2.4's list-input predict returns labels without probabilities (wrong for two
    # texts, an exception for three); the identifier must not depend on it.
    texts = ["The weather is lovely today and we are going to the beach.",
             "Le chat dort sur le canapé pendant que nous préparons le dîner.",
             "Wir fahren morgen früh mit dem Zug nach Berlin zu unseren Freunden."]
    assert [lang for lang, _ in LanguageIdentifier().predict(texts)] == ["en", "fr", "de"]
