"""BPE training without Ray: exact size, specials, round trip, loading, determinism, too little text."""
from __future__ import annotations

import gzip
import json
import random
import unicodedata

import pytest
from tokenizers import Tokenizer

from tokenizer_training.sources import safe_text
from tokenizer_training.train import (BASE_VOCAB, SPECIAL_TOKENS, VocabularyShortError, save_tokenizer_dir,
                                      tokenizer_json_bytes, train_bpe)

# Letters per script, for made-up words: the trainer sees several scripts, not only Latin.
ALPHABETS = {
    "en": "etaoinshrdlcumwfgypbvk", "de": "enisratdhulcgmoäöüß", "ru": "оеаинтсрвлкмдпуяыь",
    "zh": "的一是不了人我在有他这中大来上国个到说们", "ja": "のにはをたがでしてとなかいるもれす",
    "ar": "اليمونربتسعدفقكهح", "hi": "कखगघचछजटडतथदधनपबमयरलवशसह" + "ािीुूेैोौं्",
}


def synthetic_texts(lang: str, n_docs: int, seed: int = 0, words_per_doc: int = 80) -> list[str]:
    """Documents of Zipf-distributed made-up words (CJK without spaces), reproducible from the seed."""
    rng = random.Random(f"{lang}-{seed}")
    letters = ALPHABETS[lang]
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(400)]
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    sep = "" if lang in ("zh", "ja") else " "
    docs = []
    for _ in range(n_docs):
        words = rng.choices(vocab, weights, k=words_per_doc)
        docs.append(sep.join(words) + f" {rng.randint(0, 9999)}.")
    return docs


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [t for lang in ALPHABETS for t in synthetic_texts(lang, 120)]


@pytest.fixture(scope="module")
def trained(corpus):
    return train_bpe(corpus, 1000, show_progress=False)


def test_exact_vocab_size_and_special_ids(trained):
    assert trained.get_vocab_size(with_added_tokens=True) == 1000
    assert [trained.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert trained.encode("<|endoftext|>").ids == [2]


@pytest.mark.parametrize("size", [BASE_VOCAB + 1, 777])
def test_small_sizes_are_exact(corpus, size):
    assert train_bpe(corpus, size, show_progress=False).get_vocab_size(with_added_tokens=True) == size


def test_digits_are_single_tokens(trained):
    assert trained.encode("year 20240").tokens[-5:] == ["2", "0", "2", "4", "0"]


EDGE_CASES = [
    "emoji 🎉 family 👨‍👩‍👧 flag 🇩🇪 skin 👍🏽",
    "control \x00\x01\x07\x1b[31m\x7f tab\tcr\r\nend",
    "  leading and trailing spaces  ",
    "\n\n\nnewlines only\n",
    "mixed 中文English日本語123русский",
    "\ufeffBOM and zero\u200bwidth",
    "private use \ue000 and plane 16 \U0010fffd",
    "",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_round_trip_edge_cases(trained, text):
    assert trained.decode(trained.encode(text).ids) == text


def test_no_unknown_token_possible(trained):
    assert trained.get_vocab().get("<unk>") is None
    ids = trained.encode("never seen: ꯃꯤꯇꯩ ᏣᎳᎩ 𓀀").ids
    assert ids and all(i < 1000 for i in ids)


def test_round_trip_all_41_languages(trained, shared_dir):
    """Every held-out sentence of every language survives, although training saw only 7 made-up scripts."""
    from mixing.ratios import load_ratios

    languages = set(load_ratios().languages)
    seen: dict[str, int] = {}
    with gzip.open(shared_dir / "corpus" / "lid_dev.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["lang"] in languages and seen.get(rec["lang"], 0) < 40:
                seen[rec["lang"]] = seen.get(rec["lang"], 0) + 1
                text = unicodedata.normalize("NFC", rec["text"])
                assert trained.decode(trained.encode(text).ids) == text, rec["lang"]
    assert set(seen) == languages


def test_nfc_normalization_is_the_only_change(trained):
    decomposed = "Cafe\u0301 n\u0303"
    assert trained.decode(trained.encode(decomposed).ids) == unicodedata.normalize("NFC", decomposed)


def test_lone_surrogates_error_and_replacement(trained):
    with pytest.raises(TypeError):
        trained.encode("bad \ud800 text")
    fixed = safe_text("bad \ud800 text \ud83d\ude00")
    assert fixed == "bad \ufffd text 😀"
    assert trained.decode(trained.encode(fixed).ids) == fixed


def test_same_input_same_bytes_regardless_of_order(corpus, trained):
    shuffled = list(corpus)
    random.Random(7).shuffle(shuffled)
    again = train_bpe(iter([shuffled[:300], shuffled[300:]]), 1000, show_progress=False)
    assert tokenizer_json_bytes(again) == tokenizer_json_bytes(trained)


def test_too_little_text(corpus):
    with pytest.raises(VocabularyShortError) as info:
        train_bpe(corpus[:3], 5000, show_progress=False)
    err = info.value
    assert BASE_VOCAB < err.reached < 5000 and err.asked == 5000
    assert err.bytes_needed(10_000) > 10_000


def test_directory_loads_offline(tmp_path, trained, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = save_tokenizer_dir(tmp_path, trained, {"seed": 1}, model_max_length=16384)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "training_report.json",
        "training_run.json"]
    assert json.loads((tmp_path / "training_report.json").read_text())["tokenizer_sha256"] == report["tokenizer_sha256"]

    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).get_vocab_size() == 1000

    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2)
    assert len(hf) == 1000 and hf.model_max_length == 16384
    text = "Hello  world 🎉\n中文 123"
    ids = hf(text)["input_ids"]
    assert ids == trained.encode(text).ids  # no BOS/EOS added: the packer appends EOS itself
    assert hf.decode(ids) == text


@pytest.mark.parametrize("token,script", [(" hello", "LATIN"), ("ｈｅｌｌｏ", "LATIN"), ("数据", "CJK"),
                                          ("ー", "KATAKANA"), ("привет", "CYRILLIC"), ("12", "digit"),
                                          (" ,", "space/punct/symbol"), ("\ufffd", "partial-utf8")])
def test_token_script(token, script):
    from tokenizer_training.evaluate import token_script

    assert token_script(token) == script


def test_loader_refuses_a_broken_file_and_reads_quoted_specials_as_text(tmp_path, trained):
    from pipeline.config import ConfigError
    from tokenizer_training.load import load_tokenizer

    (tmp_path / "tokenizer.json").write_text("garbage")
    with pytest.raises(ConfigError, match="tokenizer.json: not a tokenizers JSON file"):
        load_tokenizer(tmp_path)
    trained.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    text = "quoted <|endoftext|> and <pad>"
    assert 2 not in tok.encode(text).ids and tok.decode(tok.encode(text).ids) == text
