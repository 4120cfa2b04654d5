"""The model and its attention backends on CPU: equivalence, packing, shapes, initial loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.attention import DocumentLayout, attention_kernel, available_backends, select_backend
from model.config import preset
from model.data import BatchOrder, collate, row_labels
from model.model import IGNORE_INDEX, Transformer


def document_scores(q, k, bounds):
    """(start, end, causal scaled scores (heads, n, n) in float64) for each document of a packed batch."""
    for a, b in zip(bounds, bounds[1:]):
        qs, ks = (x[a:b].double().transpose(0, 1) for x in (q, k))
        scores = qs @ ks.transpose(1, 2) / math.sqrt(q.shape[-1])
        yield a, b, scores.masked_fill(~torch.ones(b - a, b - a, dtype=torch.bool).tril(), float("-inf"))


def reference_attention(q, k, v, bounds):
    """Explicit causal softmax per document in float64: the definition, not another kernel."""
    return torch.cat([(scores.softmax(-1) @ v[a:b].double().transpose(0, 1)).transpose(0, 1)
                      for a, b, scores in document_scores(q, k, bounds)])


def rows_with(doc_lengths_per_row, seq_len, vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for lengths in doc_lengths_per_row:
        ids = torch.zeros(seq_len, dtype=torch.long)
        real = sum(lengths)
        ids[:real] = torch.randint(3, vocab, (real,), generator=gen)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        ids[cu[1:].long() - 1] = 2  # every document ends with EOS
        rows.append({"input_ids": ids, "cu_seqlens": cu})
    return rows


def test_layout_positions_restart_and_padding_is_its_own_segment():
    layout = DocumentLayout.from_rows([torch.tensor([0, 3, 5], dtype=torch.int32),
                                       torch.tensor([0, 6], dtype=torch.int32)], seq_len=6)
    assert layout.boundaries == (0, 3, 5, 6, 12)
    assert layout.positions.tolist() == [0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 4, 5]
    assert layout.max_seqlen == 6
    assert layout.segment_ids().tolist() == [[0, 0, 0, 1, 1, 2], [3, 3, 3, 3, 3, 3]]
    assert layout.causal_pairs() == 6 + 3 + 1 + 21  # n(n+1)/2 per segment, padding included


@pytest.mark.parametrize("cu", [[1, 4], [0, 4, 4], [0, 9]])
def test_layout_rejects_bad_cu_seqlens(cu):
    with pytest.raises(ValueError, match="cu_seqlens"):
        DocumentLayout.from_rows([torch.tensor(cu, dtype=torch.int32)], seq_len=8)


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_backend_matches_per_document_reference(backend):
    seq_len, heads, dim = 48, 3, 8
    rows = rows_with([[5, 17, 1, 20], [48], [30]], seq_len, vocab=10)  # incl. 1-token doc and padding
    layout = DocumentLayout.from_rows([r["cu_seqlens"] for r in rows], seq_len)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3 * seq_len, heads, dim, generator=gen, requires_grad=True) for _ in range(3))
    out = attention_kernel(backend)(q, k, v, layout)
    ref = reference_attention(q, k, v, layout.boundaries)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # gradients too: the backward pass must not leak across documents either
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad.double())
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-5)


def test_select_backend():
    assert select_backend("cpu") == "sdpa_docs"
    assert select_backend("cpu", "sdpa_mask") == "sdpa_mask"
    with pytest.raises(ValueError, match="not available"):
        select_backend("cpu", "varlen")
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend("cpu", "xformers")


def test_attention_kernel_is_resolved_when_the_model_is_built():
    pytest.importorskip("torch.nn.attention.varlen")
    model = Transformer(preset("tiny", vocab_size=64), "varlen")  # builds on CPU; only running needs CUDA
    assert model.layers[0].self_attn.attend.func.__name__ == "_varlen"
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention_kernel("xformers")


def tiny_model(vocab=512, backend="sdpa_docs", **changes):
    torch.manual_seed(0)
    return Transformer(preset("tiny", vocab_size=vocab, **changes), backend).eval()


@pytest.mark.parametrize("backend", ["sdpa_docs", "sdpa_mask"])
def test_packed_forward_equals_each_document_alone(backend):
    model = tiny_model(backend=backend)
    lengths = [7, 25, 12]
    rows = rows_with([lengths], seq_len=50, vocab=512)
    batch = collate(rows, eos_id=2)
    with torch.no_grad():
        packed = model(batch.input_ids, batch.layout)[0]
        start = 0
        for n in lengths:
            alone = collate([{"input_ids": rows[0]["input_ids"][start:start + n],
                              "cu_seqlens": torch.tensor([0, n], dtype=torch.int32)}], eos_id=2)
            torch.testing.assert_close(packed[start:start + n], model(alone.input_ids, alone.layout)[0],
                                       rtol=1e-4, atol=1e-5)
            start += n


def test_initial_loss_is_log_vocab():
    vocab = 100_534  # the full XVERSE vocabulary: the output layer is padded to 100,608
    model = tiny_model(vocab=vocab)
    assert model.lm_head.weight.shape[0] == 100_608
    batch = collate(rows_with([[40, 24], [64]], seq_len=64, vocab=vocab), eos_id=2)
    with torch.no_grad():
        loss = float(model(batch.input_ids, batch.layout, batch.labels))
        logits = model(batch.input_ids, batch.layout)
    assert logits.shape == (2, 64, vocab)  # padded logits never reach the softmax ...
    # ... nor the loss: with the 74 padded columns it would be log(100,608 / 100,534) = 7e-4 higher
    want = F.cross_entropy(logits.reshape(-1, vocab), batch.labels.reshape(-1), ignore_index=IGNORE_INDEX)
    assert loss == pytest.approx(want.item(), rel=1e-5)
    assert abs(loss - math.log(vocab)) < 0.05 * math.log(vocab)


def test_row_labels_mask_document_ends_and_padding():
    ids = torch.tensor([5, 6, 2, 7, 8, 2, 0, 0])
    labels = row_labels(ids, torch.tensor([0, 3, 6], dtype=torch.int32), eos_id=2)
    m = IGNORE_INDEX
    assert labels.tolist() == [6, 2, m, 8, 2, m, m, m]
    # a document split at the row's end (no EOS) still predicts nothing beyond the row
    labels = row_labels(torch.tensor([5, 6, 7, 8]), torch.tensor([0, 4], dtype=torch.int32), eos_id=2)
    assert labels.tolist() == [6, 7, 8, m]


def test_batch_order_is_a_function_of_seed_and_step():
    order = BatchOrder(num_rows=5, batch_size=2, seed=3)
    epoch = [i for s in range(5) for i in order.indices(s)]  # 10 draws = 2 epochs
    assert sorted(epoch[:5]) == list(range(5)) and sorted(epoch[5:]) == list(range(5))
    assert BatchOrder(5, 2, seed=3).indices(4) == order.indices(4)
    assert BatchOrder(5, 2, seed=4).indices(0) + BatchOrder(5, 2, seed=4).indices(1) != epoch[:4]


def test_xverse_65b_parameter_count_on_meta_device():
    with torch.device("meta"):
        model = Transformer(preset("xverse-65b"))
    cfg = model.cfg
    assert (cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.d_ff, cfg.max_seq_len) == (8192, 64, 80, 22016, 16384)
    assert model.num_params() / 1e9 == pytest.approx(66.4, abs=0.05)
    assert model.lm_head.weight is not model.embed_tokens.weight  # untied
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())


def test_presets_and_bad_shapes():
    from pipeline.config import ConfigError

    with torch.device("meta"):
        assert Transformer(preset("proxy-1b")).num_params() / 1e9 == pytest.approx(1.22, abs=0.01)
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset("gpt-5")
    with pytest.raises(ConfigError, match="divisible"):
        preset("tiny", n_heads=5)


def test_rows_longer_than_context_are_refused():
    model = tiny_model(max_seq_len=32)
    batch = collate(rows_with([[40]], seq_len=40, vocab=512), eos_id=2)
    with pytest.raises(ValueError, match="context"):
        model(batch.input_ids, batch.layout)


def test_chunked_loss_equals_full_loss_and_gradients():
    batch = collate(rows_with([[30, 20], [64]], seq_len=64, vocab=512), eos_id=2)
    results = []
    for chunk in (0, 24):  # 24 does not divide 128 tokens: the last chunk is short
        model = tiny_model()
        model.loss_chunk = chunk
        loss = model(batch.input_ids, batch.layout, batch.labels)
        loss.backward()
        results.append((loss.detach(), model.lm_head.weight.grad.clone(), model.embed_tokens.weight.grad.clone()))
    for full, chunked in zip(*results):
        torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk", [0, 24])
def test_a_micro_batch_without_targets_changes_nothing(chunk):
    """All-masked labels give loss 0 (not a NaN mean), so such a micro-batch leaves its step as it was."""
    from model.data import Batch
    from model.train import train_step

    real = collate(rows_with([[30, 20], [64]], seq_len=64, vocab=512), eos_id=2)
    other = collate(rows_with([[64]], seq_len=64, vocab=512, seed=1), eos_id=2)
    empty = Batch(other.input_ids, torch.full_like(other.labels, IGNORE_INDEX), other.layout)
    results = []
    for micro_batches in ([real], [real, empty]):
        model = tiny_model()
        model.loss_chunk = chunk
        assert model(empty.input_ids, empty.layout, empty.labels).item() == 0.0
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss, norm = train_step(model, model, optimizer, micro_batches, grad_clip=1.0)
        results.append((loss, norm, model.lm_head.weight.detach().clone()))
    for alone, with_empty in zip(*results):
        assert torch.isfinite(with_empty).all()
        torch.testing.assert_close(with_empty, alone, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_bf16_autocast_forward_keeps_attention_inputs_in_one_dtype(backend):
    """Under autocast the projections are bf16 while rotary tables are fp32: q and k must come back as bf16."""
    model = tiny_model(backend=backend)
    batch = collate(rows_with([[20, 12]], seq_len=32, vocab=512), eos_id=2)
    with torch.no_grad():
        full = model(batch.input_ids, batch.layout)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(batch.input_ids, batch.layout)
    assert half.dtype == torch.bfloat16
    assert float((half.float() - full).norm() / full.norm()) < 2e-2


def test_rotary_table_is_the_formula_at_every_position_and_survives_to_empty():
    """The per-position lookup must equal cos/sin of position x frequency, rebuilt after `to_empty`."""
    model = tiny_model(max_seq_len=64)
    cfg = model.cfg
    positions = torch.tensor([0, 1, 7, 63])
    inv_freq = cfg.rope_base ** (-torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
    angles = positions.double()[:, None] * inv_freq
    expected = torch.cat((angles, angles), dim=-1)
    torch.testing.assert_close(model.rope_cos[positions].double(), expected.cos(), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.rope_sin[positions].double(), expected.sin(), atol=1e-5, rtol=0)
    assert "rope_cos" not in model.state_dict()  # a function of the config, never checkpointed

    table = model.rope_cos.clone()
    model.to_empty(device="cpu")
    model.init_weights()
    assert torch.equal(model.rope_cos, table)
