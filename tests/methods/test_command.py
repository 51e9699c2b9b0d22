"""`tunesmith methods`: the table and its JSON, through the real CLI entry point."""

from __future__ import annotations

import json

from tunesmith.cli import main

METHODS = [
    "lora", "qlora", "dora", "rslora", "houlsby", "pfeiffer", "parallel", "prefix", "prompt",
    "ia3", "mam", "freeze", "full",
]  # fmt: skip


def test_json_lists_every_method_with_its_unified_view(capsys):
    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == METHODS
    by_name = {r["name"]: r for r in rows}
    assert by_name["houlsby"]["insertion"] == "serial"
    assert by_name["parallel"]["composition"] == "scaled add"
    assert by_name["prompt"]["position"] == "embeddings"
    assert {r["name"] for r in rows if r["mergeable"]} == {"lora", "qlora", "dora", "rslora", "ia3"}
    assert "trainable" not in by_name["lora"]
    # the capabilities other commands read from the spec
    assert {r["name"] for r in rows if r["trains_base_weights"]} == {"freeze", "full"}
    assert {r["name"] for r in rows if r["kv_prefix"]} == {"prefix", "prompt", "mam"}
    assert {r["name"] for r in rows if r["targets_modules"]} == {"lora", "qlora", "dora", "rslora"}
    assert all(r["default_lr"] > 0 for r in rows)


def test_counts_for_the_embedded_model_match_hand_computed_values(capsys):
    assert main(["methods", "--json", "--model-config", "embedded-size"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    # SmolLM2-135M: d=576, L=30, kv_dim=3·64=192, d_ff=1536, V=49152, tied embeddings.
    assert rows["full"]["trainable"] == 134_515_008  # the published 134.5M
    # the default recipe: rank 4 on q, k, v, o, gate, up, down
    per_layer = (576 + 576) + 2 * (576 + 192) + (576 + 576) + 2 * (576 + 1536) + (1536 + 576)
    assert rows["lora"]["trainable"] == 30 * 4 * per_layer
    magnitudes = 576 + 2 * 192 + 576 + 2 * 1536 + 576
    assert rows["dora"]["trainable"] == rows["lora"]["trainable"] + 30 * magnitudes
    assert rows["houlsby"]["trainable"] == 2 * 30 * (2 * 576 * 64 + 64 + 576)
    assert rows["prompt"]["trainable"] == 20 * 576
    assert rows["ia3"]["trainable"] == 30 * (192 + 192 + 1536)
    assert rows["mam"]["trainable"] == 30 * 2 * 20 * 192 + 30 * (2 * 576 * 64 + 64 + 576)
    assert rows["full"]["trainable_share"] == 1.0


def test_counts_for_the_seed_recipe(capsys):
    argv = ["methods", "--json", "--model-config", "embedded-size", "--target", "attn-qv"]
    assert main([*argv, "--rank", "8"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["lora"]["trainable"] == 30 * 8 * ((576 + 576) + (576 + 192))  # q_proj, v_proj
    assert rows["dora"]["trainable"] == rows["lora"]["trainable"] + 30 * (576 + 192)


def test_table_for_a_model_directory(tiny_llama_dir, capsys):
    assert main(["methods", "--model-config", str(tiny_llama_dir), "--target", "all-linear"]) == 0
    out = capsys.readouterr().out
    for name in METHODS:
        assert name in out


def test_bad_model_config_is_a_usage_error(tmp_path, capsys):
    assert main(["methods", "--model-config", str(tmp_path / "missing")]) == 2
    assert "--model-config" in capsys.readouterr().err
