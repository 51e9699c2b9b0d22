"""2 ranks on this CPU (gloo), tiny Llama: DeepSpeed ZeRO under the tunesmith loop matches one process.

Each run is the real CLI with the shipped configs: ZeRO-2 LoRA through ``accelerate launch
--use_deepspeed --deepspeed_config_file`` (``--distributed auto`` picks deepspeed), ZeRO-3
LoRA through ``tunesmith train --nproc 2 --distributed deepspeed`` (checkpointing at step 2),
ZeRO-3 full fine-tuning through plain torchrun. The references and checks are the DDP/FSDP
ones (``helpers.py``): same per-step losses at the same global batch (rtol 1e-4), the saved
adapter / model gives the same logits, a resumed run equals the uninterrupted one.
"""

import json

import pytest

from tests.distributed.helpers import (
    EXAMPLES,
    accelerate_launch,
    assert_resume_equals_uninterrupted,
    assert_same_adapter_logits,
    assert_same_losses,
    assert_same_model_logits,
    nproc2,
    torchrun,
)
from tunesmith.cli import main

pytestmark = pytest.mark.xdist_group("distributed")
ZERO2, ZERO3 = str(EXAMPLES / "deepspeed_zero2.json"), str(EXAMPLES / "deepspeed_zero3.json")


@pytest.fixture(scope="module")
def runs(reference_runs, train_args, tmp_path_factory):
    root = tmp_path_factory.mktemp("deepspeed")
    lora, full = train_args["lora"], train_args["full"]
    out = {name: root / name for name in ("zero2", "zero3", "zero3_full")}
    accelerate_launch(["--use_deepspeed", "--deepspeed_config_file", ZERO2],
                      [*lora, "--batch-size", "4", "--output", str(out["zero2"])])  # fmt: skip
    nproc2([*lora, "--batch-size", "4", "--distributed", "deepspeed", "--distributed-config",
            ZERO3, "--save-steps", "2", "--output", str(out["zero3"])])  # fmt: skip
    torchrun([*full, "--batch-size", "4", "--distributed", "deepspeed", "--distributed-config",
              ZERO3, "--output", str(out["zero3_full"])])  # fmt: skip
    return {**reference_runs, **out}


@pytest.mark.parametrize("name,reference", [("zero2", "single"), ("zero3", "single"),
                                            ("zero3_full", "single_full")])  # fmt: skip
def test_loss_curve_matches_one_process_at_the_same_global_batch(runs, name, reference):
    assert_same_losses(runs[name], runs[reference])


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_adapter_saved_by_rank_0_reloads_to_the_same_logits(runs, name, tiny_llama_dir):
    assert_same_adapter_logits(runs[name], runs["single"], tiny_llama_dir)


def test_full_model_saved_under_zero3_reloads_to_the_same_logits(runs):
    assert_same_model_logits(runs["zero3_full"], runs["single_full"])


def test_checkpoint_is_deepspeeds_sharded_state_with_tunesmiths_position(runs):
    from tunesmith.train.checkpoint import verify_checkpoint

    step2 = runs["zero3"] / "checkpoints" / "step-2"
    assert verify_checkpoint(step2)  # the manifest covers the engine's files too
    files = set(json.loads((step2 / "manifest.json").read_text())["files"])
    assert {"state.json", "scheduler.pt", "rng.pt", "rng-rank1.pt", "deepspeed/latest"} <= files
    shards = [f for f in files if f.endswith("optim_states.pt")]
    assert len(shards) == 2  # one partition of master weights + AdamW state per rank
    assert not (step2 / "trainable.safetensors").exists()
    plan = json.loads((runs["zero3"] / "plan.json").read_text())
    assert (plan["inputs"]["nproc"], plan["inputs"]["sharding"]) == (2, "zero3")
    # The run records the engine, so a plain --resume re-launches it.
    cfg = (runs["zero2"] / "config.yaml").read_text()
    assert "distributed: deepspeed" in cfg and "deepspeed_zero2.json" in cfg


def test_resume_under_zero3_equals_the_uninterrupted_run(runs, tmp_path):
    assert_resume_equals_uninterrupted(runs["zero3"], tmp_path)


def test_a_config_contradicting_the_run_stops_before_launching(train_args, tmp_path, capsys):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": 0.5}))
    args = [*train_args["lora"], "--batch-size", "4", "--output", str(tmp_path / "run")]
    code = main(["train", *args, "--nproc", "2", "--distributed", "deepspeed",
                 "--distributed-config", str(bad)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert str(bad) in err and "gradient_clipping is 0.5 but --max-grad-norm means 1.0" in err
    assert not (tmp_path / "run").exists()
