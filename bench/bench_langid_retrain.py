"""Does a retrained fastText model get language ID past 0.96 on lid_dev, and does it hold elsewhere?

`fasttext-predict` (the one `fasttext` module xdp installs) cannot train. floret, explosion's fastText
fork, can: its supervised mode is fastText's, and it installs a module named `floret`, so it sits beside
fasttext-predict without overwriting it. This benchmark trains a small floret classifier over the 42
classes ("companion") and combines it with lid.176 the way a shipped rule would have to:
p ∝ p_lid176 · p_companion^alpha, then the rule's priors/markers tuned as `xdp tune-langid` does.

The dev set is split with the tuner's own hash: its holdout half stays untouched; the tune half is split
again, one part trains the companion, the other tunes alpha's rule (so tuning never sees the companion's
training rows). Every other-domain file is scored with the shipped rule and with each companion variant:

* ``as labelled``: the companion learns lid_dev's labels as they are;
* ``ms+id merged``: the companion learns Malay and Indonesian as one class (split evenly between them),
  so it cannot learn what lid_dev's `ms` rows look like, only everything else.

    pip install floret==0.10.5     # bench-only; not an xdp dependency
    python bench/bench_langid_retrain.py [--alpha 0.5] [--dim 32] [--epoch 25]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "corpus"
DOMAINS = ("flores", "xquad", "bible", "faq", "manpages", "libreoffice", "handbook", "udhr")

from pipeline.langid import LanguageIdentifier  # noqa: E402
from pipeline.langid_tune import (baselines, class_indices, per_class_accuracy, read_labelled,  # noqa: E402
                                  split_mask, tune_rules)

EPS = 1e-4  # floor on companion probabilities, so one near-zero class cannot veto lid.176 alone


class Companion:
    """A floret supervised model trained on labelled rows; `probabilities` gives (n, 42) in rule order."""

    def __init__(self, texts, labels, classes, merge: dict[str, tuple[str, ...]], args):
        import floret

        self.classes = list(classes)
        self.merge = merge  # companion label -> the rule classes its probability is split over
        rename = {c: label for label, members in merge.items() for c in members}
        with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as fh:
            for text, label in zip(texts, labels):
                fh.write(f"__label__{rename.get(label, label)} {' '.join(text.split())}\n")
        started = time.perf_counter()
        # one thread: fastText's hogwild SGD is only reproducible single-threaded
        self.model = floret.train_supervised(fh.name, dim=args.dim, epoch=args.epoch, lr=args.lr, minn=1, maxn=4,
                                             bucket=200_000, thread=1, seed=args.seed, verbose=0)
        self.train_s = time.perf_counter() - started
        Path(fh.name).unlink()

    def probabilities(self, texts) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        out = np.zeros((len(texts), len(self.classes)))
        predict = self.model.f.predict  # floret's Python wrapper breaks under NumPy 2 (copy=False); its binding does not
        for row, text in enumerate(texts):
            for p, label in predict(text.replace("\n", " "), -1, 0.0, "replace"):
                members = self.merge.get(label[9:], (label[9:],))
                out[row, [index[m] for m in members]] += p / len(members)
        return out


def combine(lid: np.ndarray, companion: np.ndarray, alpha: float) -> np.ndarray:
    mixed = lid * (companion + EPS) ** alpha
    return mixed / mixed.sum(axis=1, keepdims=True)


def class_accuracy(rules, probs, markers, truth) -> np.ndarray:
    pred, _ = rules.decide(probs, markers)
    return per_class_accuracy(truth, pred, len(rules.classes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alpha", type=float, default=0.5, help="companion exponent in the product (default 0.5)")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--epoch", type=int, default=25)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1, help="the tuner's split seed (the companion split uses seed+1)")
    args = ap.parse_args()
    try:
        import floret  # noqa: F401
    except ImportError:
        raise SystemExit("this benchmark needs floret: pip install floret==0.10.5 (module `floret`; it leaves "
                         "fasttext-predict's `fasttext` alone)") from None

    lid = LanguageIdentifier()
    shipped, base = lid.rules, baselines(lid.rules)["untuned"]
    classes = list(base.classes)
    dev = read_labelled(str(SHARED / "lid_dev.jsonl.gz"))
    truth = class_indices(dev.labels, base)
    tune_half = split_mask(dev.texts, args.seed)
    train_part = tune_half & split_mask(dev.texts, args.seed + 1)
    tune_part, holdout = tune_half & ~train_part, ~tune_half
    names = [classes[t] for t in truth]

    def rows(mask):
        return [dev.texts[i] for i in np.flatnonzero(mask)], [names[i] for i in np.flatnonzero(mask)]

    lid_probs = base.probabilities(lid.top_k(dev.texts))
    markers = base.marker_matrix(dev.texts)
    variants = {"as labelled": {}, "ms+id merged": {"id": ("id", "ms")}}
    contestants = {"shipped rule (lid.176 only)": (shipped, None)}
    for name, merge in variants.items():
        companion = Companion(*rows(train_part), classes, merge, args)
        probs = combine(lid_probs, companion.probabilities(dev.texts), args.alpha)
        rules = tune_rules(probs[tune_part], markers[tune_part], truth[tune_part], base)
        contestants[f"companion, {name}"] = (rules, companion)
        print(f"# companion {name}: trained on {int(train_part.sum()):,} rows in {companion.train_s:.1f} s; "
              f"tuned weights {rules.weights} markers {rules.marker_weights}", flush=True)

    def score(data_texts, data_truth, lp, mk):
        out = {}
        for name, (rules, companion) in contestants.items():
            probs = lp if companion is None else combine(lp, companion.probabilities(data_texts), args.alpha)
            out[name] = class_accuracy(rules, probs, mk, data_truth)
        return out

    held = np.flatnonzero(holdout)
    tables = {"lid_dev holdout": score([dev.texts[i] for i in held], truth[held], lid_probs[held], markers[held])}
    for domain in DOMAINS:
        data = read_labelled(str(SHARED / "docs" / f"{domain}-000.jsonl.zst"))
        tables[domain] = score(data.texts, class_indices(data.labels, base), base.probabilities(lid.top_k(data.texts)),
                               base.marker_matrix(data.texts))
        print(f"# scored {domain} ({len(data.texts):,} texts)", flush=True)

    names_c = list(contestants)
    print(f"\n## Macro accuracy over the classes present (alpha {args.alpha}, companion dim {args.dim})\n")
    print("| data | " + " | ".join(names_c) + " |")
    print("|---|" + "---:|" * len(names_c))
    for data, accs in tables.items():
        print(f"| {data} | " + " | ".join(f"{np.nanmean(accs[n]):.4f}" for n in names_c) + " |")
    print("\n## Classes where a companion moves accuracy by more than 0.05 (shipped -> as labelled / merged)\n")
    print("| data | class | " + " | ".join(names_c) + " |")
    print("|---|---|" + "---:|" * len(names_c))
    for data, accs in tables.items():
        ref = accs[names_c[0]]
        for c, cls in enumerate(classes):
            if any(abs(accs[n][c] - ref[c]) > 0.05 for n in names_c[1:]):
                print(f"| {data} | {cls} | " + " | ".join(f"{accs[n][c]:.3f}" for n in names_c) + " |")


if __name__ == "__main__":
    main()
