"""The train recipe's steps for a preference objective: its data, and its held-out metrics.

``prepare_preference_data`` reads pairs (or KTO examples) from ``--data``, cleans them
(:func:`~tunesmith.data.preference_clean.clean_preferences`) and writes the kept records into
the run directory, so a resumed run reads back exactly these. The held-out side comes from
``--eval-data`` or a seeded 10% of the prompts (split by prompt, so no prompt is on both sides).
``preference_metrics`` scores held-out pairs: the share where the chosen completion is more
likely than the rejected one, and the mean implicit-reward margin of the objective.
"""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.atomic import write_json, write_jsonl
from tunesmith.config import TrainConfig
from tunesmith.data.preference import (
    PreferencePair,
    PreferenceRecord,
    UnpairedExample,
    read_preference_file,
)
from tunesmith.data.preference_clean import clean_preferences, tokenize_pair, tokenize_unpaired
from tunesmith.data.records import Conversation
from tunesmith.data.validate import Invalid
from tunesmith.errors import DataError, UserInputError
from tunesmith.objectives import (
    ObjectiveSpec,
    PairIds,
    ReferenceCache,
    UnpairedIds,
    collate_pairs,
    reference_logps,
    sequence_logps,
)
from tunesmith.rundir import RunDir


@dataclass
class PreferenceSplit:
    """The cleaned preference records of a run and the cleaning report."""

    train: list[PreferenceRecord]
    eval: list[PreferenceRecord]
    report: dict[str, Any]

    @property
    def eval_conversations(self) -> list[Conversation]:
        """The held-out prompts with their preferred answer: what the task metric scores."""
        return [r.side(r.chosen) for r in self.eval if isinstance(r, PreferencePair)]

    def summary(self) -> str:
        r = self.report
        return (
            f"data: {r['input_records']} preference records -> {len(self.train)} train, "
            f"{len(self.eval)} eval (dropped {r['exact_duplicates']} exact dup, "
            f"{r['identical_sides']} with chosen == rejected, {len(r['invalid'])} invalid, "
            f"{r['eval_leaks']} eval leaks)"
        )


def _to_json(r: PreferenceRecord) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt": [{"role": t.role, "content": t.content} for t in r.prompt]}
    if isinstance(r, PreferencePair):
        row.update(
            chosen=[{"role": "assistant", "content": r.chosen}],
            rejected=[{"role": "assistant", "content": r.rejected}],
        )
    else:
        row.update(completion=[{"role": "assistant", "content": r.completion}], label=r.desirable)
    if r.meta:
        row["meta"] = r.meta
    return row


def _read(paths, invalid: list[dict] | None = None) -> list[PreferenceRecord]:
    out: list[PreferenceRecord] = []
    for path in paths:
        for rec in read_preference_file(path):
            if isinstance(rec, Invalid):
                if invalid is None:
                    raise DataError(rec.reason, rec.where)
                invalid.append(rec.to_json())
            else:
                out.append(rec)
    return out


def _split_by_prompt(records: list[PreferenceRecord], seed: int, share: float = 0.1):
    prompts = sorted({r.prompt_text for r in records})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[: max(1, round(share * len(prompts)))]) if len(prompts) > 1 else set()
    return [r for r in records if r.prompt_text not in held], [
        r for r in records if r.prompt_text in held
    ]


def prepare_preference_data(cfg: TrainConfig, run: RunDir, reuse: bool = False) -> PreferenceSplit:
    """Clean ``--data`` into ``run.data_dir`` and read it back (``reuse``: read back only)."""
    run = RunDir(run)
    if reuse and run.train_data.is_file() and run.clean_report.is_file():
        evals = _read([run.eval_data]) if run.eval_data.is_file() else []
        return PreferenceSplit(
            _read([run.train_data]), _limit(evals, cfg), json.loads(run.clean_report.read_text())
        )
    if not cfg.data:
        from tunesmith.demo.pairs import write_demo_pairs

        paths = write_demo_pairs(run.data_dir, seed=0)
        inputs, eval_inputs = [str(paths[0])], [str(paths[1])]
    else:
        inputs, eval_inputs = list(cfg.data), [cfg.eval_data] if cfg.eval_data else None
    invalid: list[dict] = []
    records = _read(inputs, invalid if cfg.on_error == "skip" else None)
    if eval_inputs:
        train, evals = records, _read(eval_inputs)
    else:
        train, evals = _split_by_prompt(records, cfg.seed)
    want = "unpaired" if cfg.objective == "kto" else "pairs"
    if any(isinstance(r, UnpairedExample) != (want == "unpaired") for r in train):
        raise UserInputError(
            f"--objective {cfg.objective} trains on {want} records; --data holds the other kind"
        )
    kept, report = clean_preferences(train, evals)
    report_json = report.to_json() | {"invalid": invalid}
    run.data_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(run.train_data, [_to_json(r) for r in kept])
    write_jsonl(run.eval_data, [_to_json(r) for r in evals])
    write_json(run.clean_report, report_json)
    return PreferenceSplit(kept, _limit(evals, cfg), report_json)


def _limit(evals: list[PreferenceRecord], cfg: TrainConfig) -> list[PreferenceRecord]:
    return evals[: cfg.eval_limit] if cfg.eval_limit else evals


def tokenize_preferences(
    tokenizer, records: list[PreferenceRecord], seq_len: int
) -> list[PairIds | UnpairedIds]:
    """Token ids of every record, each side's mask checked (see ``tokenize_pair``)."""
    out: list[PairIds | UnpairedIds] = []
    for r in records:
        if isinstance(r, PreferencePair):
            out.append(PairIds(*tokenize_pair(tokenizer, r, seq_len)))
        else:
            out.append(UnpairedIds(*tokenize_unpaired(tokenizer, r, seq_len), r.desirable))
    return out


@torch.no_grad()
def preference_metrics(
    model,
    pad_id: int,
    pairs: list[PairIds],
    spec: ObjectiveSpec,
    params: dict[str, Any],
    device,
    *,
    frozen=None,
    cache: ReferenceCache | None = None,
    as_reference: bool = False,
    batch_size: int = 8,
) -> dict[str, float]:
    """``preference_accuracy`` (chosen log-prob > rejected) and ``reward_margin`` on held-out pairs.

    The margin is the objective's implicit reward: ``beta·(log pi - log pi_ref)`` for the
    reference-based objectives (0 for the reference itself), ``beta·mean log pi`` for ORPO
    and SimPO. ``as_reference``: the model scored *is* the reference (the base before
    training), so the reference-based margin is 0 by definition. ``cache``: the pairs'
    reference log-probs scored before training (``--init-from``); else ``frozen`` or the
    model with its adapter off is the reference.
    """
    was_training = model.training
    model.eval()
    wins, margin, n = 0, 0.0, 0
    beta = params.get("beta", 0.1)
    for i in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs[i : i + batch_size], pad_id).to(device)
        chosen, rejected = sequence_logps(model, batch).halves()
        wins += int((chosen.total > rejected.total).sum())
        if spec.needs_reference and as_reference:
            gap = torch.zeros_like(chosen.total)
        elif spec.needs_reference:
            ref = (
                cache.rows(range(i, i + chosen.total.shape[0]), device)
                if cache is not None
                else reference_logps(model, batch, frozen)
            )
            ref_c, ref_r = ref.halves()
            gap = (chosen.total - ref_c.total) - (rejected.total - ref_r.total)
        else:
            gap = chosen.mean - rejected.mean
        margin += float((beta * gap).sum())
        n += chosen.total.shape[0]
    model.train(was_training)
    return {"preference_accuracy": wins / max(n, 1), "reward_margin": margin / max(n, 1)}


@dataclass
class PreferenceRun:
    """What ``tunesmith train`` adds for a preference objective: the loop's batches and loss,
    the reference for methods without an adapter to switch off, and the held-out metrics."""

    spec: ObjectiveSpec
    params: dict[str, Any]
    cfg: TrainConfig
    pad_id: int
    device: Any
    eval_pairs: list[PairIds]
    frozen: Any = None  # a frozen copy of the starting weights (full, freeze)
    caches: dict[str, ReferenceCache] | None = None  # --init-from: {"train", "eval"}

    @classmethod
    def for_run(cls, cfg: TrainConfig, built, train_ex, eval_ex, run: RunDir) -> PreferenceRun:
        """The objective's parameters, and its reference: with ``--init-from`` the starting
        adapter, scored once now (or read back on resume); else the adapter off, or a
        frozen copy for methods that train the base weights."""
        import copy

        from tunesmith.objectives import get_objective, objective_params

        spec = get_objective(cfg.objective)
        params = objective_params(
            spec,
            beta=cfg.beta,
            simpo_gamma=cfg.simpo_gamma,
            desirable_weight=cfg.desirable_weight,
            undesirable_weight=cfg.undesirable_weight,
            sft_weight=cfg.sft_weight,
        )
        device = next(built.model.parameters()).device
        pad_id = built.tokenizer.pad_token_id
        pairs = [e for e in eval_ex if isinstance(e, PairIds)]
        frozen, caches = None, None
        if spec.needs_reference and cfg.init_from:
            caches = {
                split: _cached_reference(
                    built.model, examples, pad_id, device, run.reference_logps(split)
                )
                for split, examples in (("train", train_ex), ("eval", pairs))
            }
        elif spec.needs_reference and not hasattr(built.model, "disable_adapter"):
            frozen = copy.deepcopy(built.model).eval().requires_grad_(False)
        return cls(spec, params, cfg, pad_id, device, pairs, frozen, caches)

    def loop_inputs(self, train_ex, pad_id: int) -> dict[str, Any]:
        """``batches`` and ``loss_fn`` for :class:`~tunesmith.train.loop.TrainLoop`."""
        from tunesmith.train.pref_batches import PreferenceBatches, objective_loss_fn

        batches = PreferenceBatches(
            train_ex,
            pad_id,
            batch_size=self.cfg.batch_size,
            grad_accum=self.cfg.grad_accum,
            seed=self.cfg.seed,
            group_by_length=self.cfg.group_by_length,
        )
        return {
            "batches": batches,
            "loss_fn": objective_loss_fn(
                self.spec, self.params, self.frozen, self.caches["train"] if self.caches else None
            ),
        }

    def _metrics(self, model, as_reference: bool) -> dict[str, float]:
        return preference_metrics(
            model, self.pad_id, self.eval_pairs, self.spec, self.params, self.device,
            frozen=self.frozen, cache=self.caches["eval"] if self.caches else None,
            as_reference=as_reference,
        )  # fmt: skip

    def add_base_metrics(self, model, base_side, run: RunDir) -> None:
        """The reference side's preference metrics, into ``eval_base.json`` too: the base
        (adapter off), or with ``--init-from`` the starting model itself."""
        if not self.eval_pairs:
            return
        from tunesmith.train.steps import adapter_disabled

        with contextlib.nullcontext() if self.cfg.init_from else adapter_disabled(model):
            base_side.metrics.update(self._metrics(model, as_reference=True))
        data = json.loads(run.eval_base_path.read_text())
        data["metrics"] = base_side.metrics
        write_json(run.eval_base_path, data)

    def add_adapted_metrics(self, model, report: dict[str, Any], run: RunDir) -> None:
        """The tuned side's preference metrics, next to the task metric in ``eval.json``."""
        if not self.eval_pairs:
            return
        report["metrics"].setdefault("adapted", {}).update(self._metrics(model, as_reference=False))
        report["objective"] = {"name": self.spec.name, **self.params}
        write_json(run.eval_path, report)


def _cached_reference(model, examples, pad_id: int, device, path) -> ReferenceCache:
    """The pairs' reference log-probs: read back (a resumed run) or scored now and saved."""
    if path.is_file():
        return ReferenceCache.load(path)
    if any(not isinstance(e, PairIds) for e in examples):
        raise UserInputError(
            "--init-from with --objective kto is not supported (its KL rows change per batch)"
        )
    cache = ReferenceCache.score(model, examples, pad_id, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    cache.save(path)
    return cache
