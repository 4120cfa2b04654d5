"""The decision rule that turns lid.176's top-k labels into one of the 41 target codes or ``other``.

We cannot retrain (``fasttext-predict`` only predicts), so accuracy comes from reading more of the model's
output than its first label:

* **aliases** fold fastText labels into the ratio table's spelling (``he`` -> ``iw``) and merge labels
  that the table treats as one language (``nn`` -> ``no``: ISO 639-1 ``no`` is the Norwegian macrolanguage);
  their probabilities are summed.
* **weights** (priors) rescale each target's probability before the argmax, which is how confusable pairs
  are settled: lid.176 gives Malay text mostly to ``id`` but with a telling share on ``ms``.
  The mass on every non-target label (plus what top-k did not return) competes as ``other`` with its own
  weight, so a text in a language we do not collect is not forced into its nearest target.
* **markers** are letters, or spellings of common words, that one language of a confusable pair writes
  and the other does not -- Czech ``ř ů ě`` against Slovak ``ä ô ľ ĺ ŕ``, Catalan ``l·l`` against Spanish,
  Serbian ``ђ ћ`` against Russian, Malaysian ``kerana``/``bahawa`` against Indonesian ``karena``/``bahwa``.
  A text that shows a language's marker has that language's weight multiplied by its ``marker_weights``
  entry. Markers come from orthography, not from dev-set vocabulary, which keeps them honest elsewhere.
* **thresholds** send a winner whose probability is too low to ``other``.

The numbers live in a small JSON file (``pipeline/resources/langid_lid176.json``), written by
``xdp tune-langid`` from a labelled dev set, so they are reproducible and swappable for another model.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.config import ConfigError

OTHER = "other"
LABEL_PREFIX = "__label__"
DEFAULT_PARAMS = "langid_lid176.json"


def target_languages() -> tuple[str, ...]:
    """The 41 natural languages of the shipped XVERSE-65B ratio table, spelled as the table spells them."""
    from mixing.ratios import load_ratios

    return tuple(load_ratios().languages)


@dataclass
class LangIdRules:
    """Aliases, weights, markers and thresholds for one fastText LID model (see the module docstring)."""

    languages: list[str]
    aliases: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # missing: 1.0; key "other" weighs the rest
    thresholds: dict[str, float] = field(default_factory=dict)  # missing: 0.0
    markers: dict[str, str] = field(default_factory=dict)  # class -> regex that only that class writes
    marker_weights: dict[str, float] = field(default_factory=dict)  # missing: 1.0
    top_k: int = 5  # labels read per text: on lid_dev the first five hold 97% of the mass (ten: 98%)
    provenance: dict = field(default_factory=dict)  # how the numbers were obtained (written by the tuner)

    def __post_init__(self):
        if not (isinstance(self.languages, list) and self.languages
                and all(isinstance(lang, str) and lang for lang in self.languages)):
            raise ConfigError(f"langid rules: languages: expected a list of language codes, got {self.languages!r}")
        known = set(self.languages)
        if len(known) != len(self.languages) or OTHER in known:
            raise ConfigError("langid rules: languages must be distinct and must not include 'other'")
        for name, table in (("weights", self.weights), ("thresholds", self.thresholds),
                            ("markers", self.markers), ("marker_weights", self.marker_weights)):
            bad = sorted(set(table) - known - {OTHER})
            if bad:
                raise ConfigError(f"langid rules: {name}.{bad[0]}: not one of the target languages")
        for name, table in (("weights", self.weights), ("marker_weights", self.marker_weights)):
            for lang, w in table.items():
                if not w > 0:
                    raise ConfigError(f"langid rules: {name}.{lang}: must be > 0, got {w!r}")
        self._patterns = {}
        for lang, pattern in self.markers.items():
            try:
                self._patterns[lang] = re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"langid rules: markers.{lang}: bad regular expression: {exc}") from None
        for lang, t in self.thresholds.items():
            if not 0.0 <= t <= 1.0:
                raise ConfigError(f"langid rules: thresholds.{lang}: must be in [0, 1], got {t!r}")
        if self.top_k < 1:
            raise ConfigError(f"langid rules: top_k: must be >= 1, got {self.top_k!r}")
        self._index = {lang: i for i, lang in enumerate(self.languages)}
        self._label_columns: dict[str, Optional[int]] = {}  # fastText label -> column, filled as seen
        self.classes = np.array([*self.languages, OTHER], dtype=object)
        self.weight_vector = np.array([self.weights.get(c, 1.0) for c in self.classes], dtype=np.float64)
        self.threshold_vector = np.array([self.thresholds.get(c, 0.0) for c in self.classes], dtype=np.float64)
        self.marker_weight_vector = np.array([self.marker_weights.get(c, 1.0) for c in self.classes],
                                             dtype=np.float64)

    # ------------------------------------------------------------------ construction / storage

    @classmethod
    def load(cls, path: Optional[str | Path] = None) -> "LangIdRules":
        """Read a rules file; default: the table tuned for lid.176.ftz that ships with xdp."""
        source = Path(path) if path is not None else resources.files("pipeline") / "resources" / DEFAULT_PARAMS
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"langid rules {source}: cannot read: {exc}") from None
        if not isinstance(data, dict) or "languages" not in data:
            raise ConfigError(f"langid rules {source}: expected a JSON object with a 'languages' list")
        try:
            return cls(**data)
        except (TypeError, ConfigError) as exc:  # name the file the bad field is in
            raise ConfigError(f"langid rules {source}: {str(exc).removeprefix('langid rules: ')}") from None

    def save(self, path: str | Path) -> None:
        """Write atomically, keys sorted, so the same tuning run gives the same bytes."""
        from pipeline.langid_io import atomic_output

        with atomic_output(path) as fh:
            fh.write(json.dumps(asdict(self), indent=1, sort_keys=True, ensure_ascii=False) + "\n")

    def replace(self, **changes) -> "LangIdRules":
        data = asdict(self)
        data.update(changes)
        return LangIdRules(**data)

    # ------------------------------------------------------------------ scoring

    def probabilities(self, predictions: Sequence[tuple[Sequence[str], Sequence[float]]]) -> np.ndarray:
        """(n, 42) matrix from fastText's ``(labels, probs)`` per text: the summed probability of each
        target's labels among the first `top_k`, and in the last column everything else (non-target
        labels and the mass top-k did not return)."""
        n_targets = len(self.languages)
        out = np.zeros((len(predictions), n_targets + 1), dtype=np.float64)
        columns, k = self._label_columns, self.top_k
        for row, (labels, probs) in enumerate(predictions):
            for p, label in zip(probs[:k], labels[:k]):
                col = columns.get(label, -1)
                if col == -1:
                    col = columns[label] = self._column_of(label)
                if col is not None:
                    out[row, col] += p
        np.clip(out, 0.0, 1.0, out=out)
        out[:, n_targets] = np.clip(1.0 - out[:, :n_targets].sum(axis=1), 0.0, 1.0)
        return out

    def _column_of(self, label: str) -> Optional[int]:
        code = label[len(LABEL_PREFIX):] if label.startswith(LABEL_PREFIX) else label
        return self._index.get(self.aliases.get(code, code))

    def marker_matrix(self, texts: Sequence[str], probs: Optional[np.ndarray] = None) -> np.ndarray:
        """(n, 42) booleans: does the text show each class's marker.

        Without `probs` every pattern is searched in every text (the tuner needs them all). Given the
        texts' `probs`, only searches whose answer can change the decision run: patterns with a marker
        weight, in rows where that class could win with its marker (or does win without it, for a weight
        under 1) against the weakest its rivals can be. The decision is the same; most searches are skipped.
        """
        out = np.zeros((len(texts), len(self.classes)), dtype=bool)
        if probs is not None:
            low = probs * self.weight_vector * np.minimum(self.marker_weight_vector, 1.0)
            high = probs * self.weight_vector * np.maximum(self.marker_weight_vector, 1.0)
        for lang, pattern in self._patterns.items():
            col = self._index.get(lang, len(self.languages))
            if probs is None:
                rows = range(len(texts))
            elif self.marker_weight_vector[col] == 1.0:
                continue
            else:
                rival = np.delete(low, col, axis=1).max(axis=1)
                rows = np.flatnonzero(high[:, col] >= rival)
            for i in rows:
                out[i, col] = pattern.search(texts[i]) is not None
        return out

    def decide(self, probs: np.ndarray, markers: Optional[np.ndarray] = None,
               threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Class index per row (``len(languages)`` is ``other``) and the model probability of that class.

        ``markers`` is `marker_matrix` of the same texts (None: no marker seen); ``threshold`` is a global
        floor on top of the per-language thresholds.
        """
        weights = effective_weights(self.weight_vector, self.marker_weight_vector, markers)
        choice = choose(probs, weights, np.maximum(self.threshold_vector, threshold))
        return choice, probs[np.arange(len(probs)), choice].astype(np.float32)


def effective_weights(weights: np.ndarray, marker_weights: np.ndarray, markers: Optional[np.ndarray]) -> np.ndarray:
    """Per-row class weights: the prior, times the marker weight where the marker was seen."""
    if markers is None:
        return weights
    return weights * np.where(markers, marker_weights, 1.0)


def choose(probs: np.ndarray, weights: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Weighted argmax over the 42 classes; a target under its threshold becomes ``other`` (last column)."""
    other = probs.shape[1] - 1
    choice = np.argmax(probs * weights, axis=1)
    score = probs[np.arange(len(probs)), choice]
    return np.where((choice != other) & (score < thresholds[choice]), other, choice)
