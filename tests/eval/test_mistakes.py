"""On-policy pair mining (eval/mistakes.py) on a tiny real model: no mocks."""

import pytest

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.data.records import Conversation
from tunesmith.demo.dataset import demo_splits
from tunesmith.errors import UserInputError
from tunesmith.eval.evaluate import answer_matches
from tunesmith.eval.generate import SamplingSettings, generate
from tunesmith.eval.mistakes import likeliest_mistake, mine_pairs, reference_conversations


@pytest.fixture(scope="module")
def tiny():
    tok = make_tokenizer()
    return make_tiny_model("llama", vocab_size=len(tok)), tok


def _conv(question: str, answer: str) -> Conversation:
    return Conversation.from_messages(
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    )


def test_likeliest_mistake_is_the_most_frequent_wrong_answer():
    answers = ["a", "b", "c", "b", "ref"]
    assert likeliest_mistake("ref", answers, [False, False, False, False, True]) == "b"
    # Ties go to the first seen; right answers never count however often they occur.
    assert likeliest_mistake("ref", ["x", "y", "ok", "ok"], [False, False, True, True]) == "x"


def test_likeliest_mistake_never_returns_the_reference_or_an_empty_answer():
    # A scorer may call the reference's own text wrong (exact match is after normalizing):
    # it is still never the rejected side.
    assert likeliest_mistake("SELECT 1", [" select  1", "", "  "], [False] * 3) is None
    # Nor a completion the pair reader would refuse (control characters).
    assert likeliest_mistake("r", ["a\x1bb", "a\x1bb", "w"], [False] * 3) == "w"
    assert likeliest_mistake("r", ["r", "r", "w"], [False, False, False]) == "w"
    assert likeliest_mistake("r", ["r", "r"], [True, True]) is None


def test_answer_matches_uses_the_task_scorers():
    sql = demo_splits(seed=0, n_train=4, n_eval=2)[1]
    gold = sql[0].answer
    assert answer_matches("clinic-sql", sql[:1], [gold]) == [True]
    assert answer_matches("clinic-sql", sql[:1], ["SELECT nonsense FROM nowhere"]) == [False]
    text = [_conv("q", "Paris"), _conv("q2", "Lyon")]
    assert answer_matches("text", text, ["  paris ", "Nice"]) == [True, False]


def test_mining_pairs_wrong_prompts_and_skips_all_right_ones(tiny):
    model, tok = tiny
    near_greedy = SamplingSettings(temperature=1e-6)  # every sample is the greedy answer
    convs = [_conv("count the patients", "unused"), _conv("which city", "Lyon")]
    from tunesmith.data.render import render_prompt

    greedy = generate(model, tok, [render_prompt(tok, convs[0])], max_new_tokens=8)[0].text
    assert greedy.strip() and greedy != "Lyon"
    # The first prompt's reference is what the model says: all samples right, no pair.
    convs[0] = _conv("count the patients", greedy)
    mined = mine_pairs(model, tok, convs, samples=3, sampling=near_greedy, max_new_tokens=8)
    assert mined.all_right == 1 and mined.right == 3 and len(mined.pairs) == 1
    pair = mined.pairs[0]
    assert pair["prompt"] == [{"role": "user", "content": "which city"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "Lyon"}]
    rejected = pair["rejected"][0]["content"]
    assert rejected != "Lyon" and rejected.strip()
    s = mined.summary()
    assert (s["prompts"], s["samples"], s["prompts_all_right"], s["pairs"]) == (2, 6, 1, 1)
    assert s["right_share"] == pytest.approx(0.5)


def test_mining_the_sql_task_keeps_the_meta_and_is_seeded(tiny):
    model, tok = tiny
    convs = demo_splits(seed=0, n_train=4, n_eval=3)[1]
    kw = dict(samples=2, max_new_tokens=6, sampling=SamplingSettings(seed=7))
    mined = mine_pairs(model, tok, convs, **kw)
    # A random tiny model writes no valid SQL: every prompt gives a pair.
    assert mined.right == 0 and len(mined.pairs) == 3
    for pair, conv in zip(mined.pairs, convs, strict=True):
        assert pair["meta"] == conv.meta and pair["chosen"][0]["content"] == conv.answer
        assert pair["rejected"][0]["content"] != conv.answer
    assert mine_pairs(model, tok, convs, **kw).pairs == mined.pairs


def test_reference_conversations_refuses_a_file_without_answers(tmp_path):
    from tunesmith.atomic import write_jsonl

    missing = tmp_path / "none.jsonl"
    with pytest.raises(UserInputError, match="not found"):
        reference_conversations(missing)
    prompts_only = write_jsonl(
        tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]
    )
    with pytest.raises(UserInputError, match="reference answer"):
        reference_conversations(prompts_only)
    good = write_jsonl(tmp_path / "g.jsonl", [_conv("q", "a").to_json()] * 3)
    assert len(reference_conversations(good, limit=2)) == 2
