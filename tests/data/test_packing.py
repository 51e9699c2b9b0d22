"""Packing: rows fit, nothing crosses an example boundary, packed loss == unpacked loss."""

import json

import pytest
import torch

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.cli import main
from tunesmith.data.dataset import collate, tokenize_conversations
from tunesmith.data.packing import (
    PackedRow,
    attention_inputs,
    block_causal_mask,
    native_packing,
    pack_examples,
    segment_ids,
)
from tunesmith.data.records import Conversation
from tunesmith.data.render import FALLBACK_TEMPLATES, IGNORE_INDEX, Rendered
from tunesmith.loss import loss_sum

QUESTIONS = [
    ("How many patients?", "SELECT COUNT(*) FROM patients;"),
    ("List doctors", "SELECT name FROM doctors ORDER BY name;"),
    ("Which doctor has the most visits?", "SELECT doctor_id FROM visits GROUP BY doctor_id;"),
    ("Patients in Lyon", "SELECT name FROM patients WHERE city = 'Lyon';"),
    ("Count visits", "SELECT COUNT(*) FROM visits;"),
    ("Drugs after 2024", "SELECT drug FROM prescriptions WHERE date > '2024-01-01';"),
    ("q", "a"),
]


def examples(tok, train_on_prompt=False):
    convs = [
        Conversation.from_messages(
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        )
        for q, a in QUESTIONS
    ]
    return tokenize_conversations(tok, convs, seq_len=128, train_on_prompt=train_on_prompt)


def fake(n, start=0):
    return Rendered(list(range(start, start + n)), list(range(start, start + n)))


def test_pack_rows_fit_and_keep_every_example_once():
    ex = [fake(n, 1000 * i) for i, n in enumerate([30, 5, 20, 12, 40, 8, 3, 25])]
    rows = pack_examples(ex, seq_len=40)
    assert all(len(r.input_ids) <= 40 for r in rows)
    # 143 tokens need at least 4 rows of 40; best-fit decreasing finds 4.
    assert len(rows) == 4
    tokens = sorted(t for r in rows for t in r.input_ids)
    assert tokens == sorted(t for e in ex for t in e.input_ids)
    for r in rows:
        assert sum(r.lengths) == len(r.input_ids) == len(r.position_ids) == len(r.labels)
        # Positions restart at each example; the first label of each example is ignored.
        starts = [sum(r.lengths[:k]) for k in range(len(r.lengths))]
        for s, n in zip(starts, r.lengths, strict=True):
            assert r.position_ids[s : s + n] == list(range(n))
            assert r.labels[s] == IGNORE_INDEX
            assert r.labels[s + 1 : s + n] == r.input_ids[s + 1 : s + n]
    assert pack_examples(ex, seq_len=40) == rows  # deterministic


def test_pack_refuses_an_example_longer_than_seq_len():
    with pytest.raises(ValueError, match="more than seq_len"):
        pack_examples([fake(9)], seq_len=8)


def test_collate_packed_rows_gives_position_ids_with_padding_segment():
    rows = [PackedRow([5, 6, 7, 8, 9], [-100, 6, -100, 8, 9], [0, 1, 0, 1, 2], (2, 3)),
            PackedRow([5, 6], [-100, 6], [0, 1], (2,))]  # fmt: skip
    b = collate(rows, pad_id=0)
    assert b.position_ids.tolist() == [[0, 1, 0, 1, 2], [0, 1, 0, 1, 2]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert segment_ids(b.position_ids).tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert b.num_trained == 3 + 1
    assert collate([fake(3)], 0).position_ids is None  # unpacked batches are unchanged


def test_block_causal_mask_matches_a_loop_reference():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 0, 1, 2, 3, 4]])
    mask = block_causal_mask(pos, torch.float32)
    assert mask.shape == (2, 1, 6, 6)
    seg = [[0, 0, 0, 1, 1, 2], [0, 1, 1, 1, 1, 1]]
    for b in range(2):
        for q in range(6):
            for k in range(6):
                attended = k <= q and seg[b][q] == seg[b][k]
                assert (mask[b, 0, q, k] == 0) == attended


def unpacked_and_packed(tok, train_on_prompt=False, seq_len=64):
    ex = examples(tok, train_on_prompt)
    rows = pack_examples(ex, seq_len=seq_len)
    assert len(rows) < len(ex)  # something was actually packed
    assert any(len(r.lengths) > 2 for r in rows)
    return collate(ex, tok.pad_token_id), collate(rows, tok.pad_token_id)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("fast", [True, False])
def test_packed_loss_equals_unpacked_loss(attn, fast):
    tok = make_tokenizer()
    model = make_tiny_model("llama", vocab_size=len(tok))
    model.set_attn_implementation(attn)
    unpacked, packed = unpacked_and_packed(tok)
    assert packed.num_trained == unpacked.num_trained
    assert native_packing(model)
    with torch.no_grad():
        ref = loss_sum(model, unpacked, fast=fast)
        got = loss_sum(model, packed, fast=fast)
    assert ref.item() > 1.0
    # A leak across boundaries moves this sum by ~0.4 on this model; fp32 noise is ~1e-4.
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=5e-4)


def test_packed_loss_with_trained_prompt_and_qwen2_gradients_match():
    # train_on_prompt trains each example's first token label too: packing must drop exactly
    # that one (predicted across the boundary), as the unpacked shift does.
    tok = make_tokenizer()
    model = make_tiny_model("qwen2", vocab_size=len(tok))
    unpacked, packed = unpacked_and_packed(tok, train_on_prompt=True)
    assert packed.num_trained == unpacked.num_trained
    grads = []
    for b in (unpacked, packed):
        model.zero_grad()
        loss = loss_sum(model, b)
        loss.backward()
        grads.append((loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)


def test_explicit_4d_mask_gives_the_unpacked_logits():
    # The fallback for models whose mask is not built by transformers' masking_utils.
    tok = make_tokenizer()
    model = make_tiny_model("llama", vocab_size=len(tok))
    ex = examples(tok)[:3]
    row = pack_examples(ex, seq_len=128)[0]
    assert len(row.lengths) == 3
    b = collate([row], tok.pad_token_id)
    with torch.no_grad():
        packed = model(
            input_ids=b.input_ids,
            attention_mask=block_causal_mask(b.position_ids, torch.float32),
            position_ids=b.position_ids,
            use_cache=False,
        ).logits[0]
        start = 0
        for e in ex:  # row order equals input order
            n = len(e.input_ids)
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            torch.testing.assert_close(packed[start : start + n], alone, rtol=1e-5, atol=1e-5)
            start += n


def test_attention_inputs_choose_native_or_4d():
    tok = make_tokenizer()
    model = make_tiny_model("llama", vocab_size=len(tok))
    pos = torch.tensor([[0, 1, 0, 1]])
    mask = torch.ones_like(pos)
    assert attention_inputs(model, mask, None) == {"attention_mask": mask}
    native = attention_inputs(model, mask, pos)
    assert native["attention_mask"] is None and native["position_ids"] is pos
    # A row sharing a prompt prefix (positions 2-3 continue tokens 0-1): transformers would
    # cut it into separate sequences, so it gets the explicit mask that lets 2-3 see 0-1.
    shared = attention_inputs(model, mask, torch.tensor([[0, 1, 2, 3, 2, 3]]))
    assert shared["attention_mask"].shape == (1, 1, 6, 6)
    assert (shared["attention_mask"][0, 0, 4, :2] == 0).all()
    model.config._attn_implementation = "some_custom_kernel"  # not known to masking_utils
    assert not native_packing(model)
    fallback = attention_inputs(model, mask, pos)
    assert fallback["attention_mask"].shape == (1, 1, 4, 4)


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    """A tiny Llama whose tokenizer has no chat template, like a base (non-instruct) model."""
    out = tmp_path_factory.mktemp("tiny-base")
    tok = make_tokenizer()
    tok.chat_template = None
    make_tiny_model("llama", vocab_size=len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [
        {"instruction": f"{q} (case {i})", "output": a}
        for i in range(6)
        for q, a in QUESTIONS
        if len(a) > 1
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_args(model_dir, data, out, *extra):
    return ["train", "--model", str(model_dir), "--data", str(data), "--output", str(out),
            "--max-steps", "3", "--batch-size", "2", "--seq-len", "256", "--eval-limit", "2",
            "--max-new-tokens", "2", "--skip-base-eval", "--logging-steps", "1", *extra]  # fmt: skip


def test_train_without_template_on_a_base_model_names_the_flag(
    base_model_dir, small_data, tmp_path, capsys
):
    code = main(train_args(base_model_dir, small_data, tmp_path / "run"))
    assert code == 2
    assert "--template" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_with_fallback_template_and_packing(base_model_dir, small_data, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "run"
    code = main(train_args(base_model_dir, small_data, out, "--template", "alpaca", "--packing"))
    assert code == 0
    text = capsys.readouterr().out
    n_rows = int(text.split("examples -> ")[1].split(" rows")[0])
    assert 0 < n_rows <= 12  # 32 cleaned examples of 40-70 tokens: 3-5 per row of 256
    saved = AutoTokenizer.from_pretrained(out / "adapter")
    assert saved.chat_template == FALLBACK_TEMPLATES["alpaca"]
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert "template: alpaca" in (out / "config.yaml").read_text()
    assert "packing: true" in (out / "config.yaml").read_text()


def test_packing_is_refused_for_prompt_tuning(tiny_llama_dir, small_data, tmp_path, capsys):
    code = main(
        train_args(tiny_llama_dir, small_data, tmp_path / "run", "--packing", "--method", "prompt")
    )
    assert code == 2
    assert "packing" in capsys.readouterr().err
