"""The training bench's data: the cleaned clinic demo, once, in the form each variant reads."""

from __future__ import annotations

from pathlib import Path

from tunesmith.bench.train.measure import BenchSettings


def prepare_data(workdir: Path, settings: BenchSettings) -> dict[str, str]:
    """Generate and clean the demo once; write it as messages (tunesmith) and prompt/completion (TRL).

    Returns:
        Paths ``{"train_messages", "train_prompt_completion", "eval_messages"}``.
    """
    from tunesmith.atomic import write_jsonl
    from tunesmith.data.clean import clean
    from tunesmith.demo.dataset import write_demo_eval, write_raw_demo
    from tunesmith.models.loading import load_tokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    raw = write_raw_demo(workdir / "demo_raw.jsonl", seed=0, n_train=settings.n_train)
    held_out = write_demo_eval(workdir / "demo_eval.jsonl", seed=0, n_eval=settings.n_eval)
    result = clean(
        [raw],
        workdir / "train.jsonl",
        eval_inputs=[held_out],
        eval_share=0.0,
        tokenizer=load_tokenizer(settings.model),
        max_tokens=settings.seq_len,
        seed=settings.seed,
    )
    train = read_conversations(str(result.train_path))
    # TRL's conversational prompt-completion form: the same turns, split before the answer.
    pc_path = workdir / "train.prompt_completion.jsonl"
    write_jsonl(
        pc_path,
        (
            {
                "prompt": [{"role": t.role, "content": t.content} for t in c.prompt_turns],
                "completion": [{"role": "assistant", "content": c.answer}],
            }
            for c in train
        ),
    )
    return {
        "train_messages": str(result.train_path),
        "train_prompt_completion": str(pc_path),
        "eval_messages": str(result.eval_path),
    }


def read_conversations(path: str) -> list:
    """The conversations of one cleaned file (its preference records, if any, are skipped)."""
    from tunesmith.data.readers import read_files
    from tunesmith.data.records import Conversation

    return [c for c in read_files([path]) if isinstance(c, Conversation)]
