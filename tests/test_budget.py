"""Sparsity budget (issue 11): ``SparsityBudget`` / ``sora train --target-ratio``: the user names the adapter's size,
the gates choose which ranks fill it.

Runs: a 2-layer random BERT (hidden 32, r_max 16: 192 ranks of 64 or 96 parameters) on a synthetic task (the label
is whether the first token is below the vocabulary's middle), trained with real AdamW + proximal gate steps on CPU;
and ``python -m sora train`` on 48 RTE pairs for the SIGKILL / ``--resume`` check.
"""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from conftest import gates
from peft import PeftModel
from safetensors.torch import load_file
from test_faults import _assert_same_run, _kill_after_checkpoint, _train
from test_schedule import _config
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    get_constant_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

import sora
import sora.allocation
import sora.modules
from sora import cli
from sora.schedule import run_schedule

BATCH = 16


def _bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    return BertForSequenceClassification(config).eval()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 100, (1024, 12), generator=torch.Generator().manual_seed(1))
    return ids, (ids[:, 0] < 52).long()


def _sora_model(seed: int = 0, gate_init: float | str | None = None) -> PeftModel:
    config = sora.SoraConfig(r_max=16, lora_alpha=16, task_type="SEQ_CLS", gate_init=gate_init)
    return sora.get_sora_model(_bert(seed), config)


def _train_to_budget(
    model, steps: int, ratio: float, lr_schedule: str, score: str = "gate"
) -> tuple[int, sora.SoraOptimizer]:
    """``steps`` optimizer steps at lr 1e-2 under a budget of ``ratio`` (by default the paper's: N(0, 1) gates, the
    top-up by ``|g|``); returns the target and the optimizer."""
    optimizer = sora.SoraOptimizer(model, lr=1e-2)
    if lr_schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, steps // 10, steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, steps // 20)
    target = sora.SparsityBudget(target_ratio=ratio, score=score).attach(model, optimizer, steps)
    ids, labels = _data()
    for step in range(steps):
        batch = torch.arange(step * BATCH, (step + 1) * BATCH) % len(ids)
        model(input_ids=ids[batch], labels=labels[batch]).loss.backward()
        optimizer.step()
        scheduler.step()
        sora.budget_step(optimizer, model)
        optimizer.zero_grad()
    return target, optimizer


@pytest.fixture(scope="module")
def runs() -> dict[tuple[int, float], tuple[PeftModel, int, torch.Tensor]]:
    """Six runs: 60 steps (linear LR decay) and 600 steps (constant LR) to each of three budgets;
    (steps, ratio) -> (model, target, the gates at the start)."""
    result = {}
    for steps, lr_schedule in ((60, "linear"), (600, "constant")):
        for ratio in (0.8, 0.5, 0.2):
            model = _sora_model()
            initial = torch.cat([g.detach().clone() for g in gates(model)])
            target, _ = _train_to_budget(model, steps, ratio, lr_schedule)
            result[steps, ratio] = model, target, initial
    return result


@pytest.mark.slow  # the six runs of `runs` (up to 600 steps): ~15 s on 2 cores
def test_every_run_lands_within_5_percent_of_its_budget(runs):
    full = sum(16 * (a.in_features + b.out_features) for a, b in _pairs(runs[60, 0.8][0]))
    for (steps, ratio), (model, target, _) in runs.items():
        assert target == math.floor(ratio * full)
        nonzero = sora.count_parameters(model)["nonzero"]
        assert abs(nonzero - target) <= 0.05 * target, (steps, ratio, nonzero, target)
        assert nonzero <= target, "the last step keeps the largest set of ranks that fits"


def _pairs(model):
    return [(m.lora_a, m.lora_b) for m in sora.modules.lora_modules(model)]


@pytest.mark.slow
def test_the_budget_is_not_filled_in_module_order(runs):
    """Live ranks per module, in module order, are not a prefix fill (full modules, then empty ones): the budget is
    spread over the modules by the gates."""
    for model, _, _ in runs.values():
        live = [int((g != 0).sum()) for g in gates(model)]
        assert live != sorted(live, reverse=True), live
        assert len(set(live)) > 2, live


@pytest.mark.slow
def test_the_kept_ranks_are_not_the_largest_initial_gates(runs):
    """Gradients move the gates before and while the threshold bites: the kept set is not the top-k of the initial
    ``|g|`` (which would mean the N(0, 1) start decided), and it drifts further from it in the longer run."""
    overlap = {}
    for key, (model, _, initial) in runs.items():
        final = torch.cat([g.detach() for g in gates(model)])
        kept = final != 0
        top = torch.zeros_like(kept)
        top[initial.abs().topk(int(kept.sum())).indices] = True
        assert not torch.equal(kept, top), key
        overlap[key] = (kept & top).sum().item() / kept.sum().item()
    assert min(overlap[600, r] for r in (0.8, 0.5, 0.2)) < 0.95, overlap


@pytest.mark.slow
def test_the_export_is_a_plain_peft_adapter_of_the_budget(runs, tmp_path):
    model, target, _ = runs[600, 0.5]
    ids, _ = _data()
    with torch.no_grad():
        before = model(input_ids=ids[:64]).logits
    nonzero = sora.count_parameters(model)["nonzero"]
    sora.prune(model).save_pretrained(tmp_path / "adapter")
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sum(t.numel() for name, t in tensors.items() if "lora_" in name) == nonzero
    reloaded = PeftModel.from_pretrained(_bert(), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids[:64]).logits, before, atol=1e-5, rtol=1e-4)
    assert abs(nonzero - target) <= 0.05 * target


def test_the_controller_state_is_in_the_optimizer_state_dict_and_resumes_bit_exactly():
    """Stop after 25 of 40 steps, rebuild model and optimizer from their state dicts, go on: the gates and the budget
    keys end exactly as in the uninterrupted run (the default budget: gates started at 1.0, top-up by contribution)."""
    ids, labels = _data()

    def steps(model, optimizer, scheduler, start, stop):
        for step in range(start, stop):
            batch = torch.arange(step * BATCH, (step + 1) * BATCH)
            model(input_ids=ids[batch], labels=labels[batch]).loss.backward()
            optimizer.step()
            scheduler.step()
            sora.budget_step(optimizer, model)
            optimizer.zero_grad()

    def build():
        model = _sora_model()
        optimizer = sora.SoraOptimizer(model, lr=1e-2)
        scheduler = get_linear_schedule_with_warmup(optimizer, 4, 40)
        sora.SparsityBudget(target_params=3000).attach(model, optimizer, 40)
        return model, optimizer, scheduler

    model, optimizer, scheduler = build()
    steps(model, optimizer, scheduler, 0, 40)

    first = build()
    steps(*first, 0, 25)
    saved = (
        {k: v.clone() for k, v in first[0].state_dict().items()},
        json.loads(json.dumps(first[1].state_dict()["param_groups"])),
        first[1].state_dict(),
        first[2].state_dict(),
    )
    assert saved[1][-1]["budget_step"] == 25 and saved[1][-1]["budget_target"] == 3000
    second = build()
    second[0].load_state_dict(saved[0])
    second[1].load_state_dict(saved[2])
    second[2].load_state_dict(saved[3])
    steps(*second, 25, 40)
    for got, want in zip(gates(second[0]), gates(model), strict=True):
        assert torch.equal(got, want)
    keys = [k for k in optimizer.gate_group if k.startswith("budget_")]
    assert keys and all(second[1].gate_group[k] == optimizer.gate_group[k] for k in keys)
    assert sora.count_parameters(model)["nonzero"] <= 3000


@pytest.mark.slow
def test_sigkill_then_resume_with_a_budget_equals_an_uninterrupted_run(tmp_path, glue_dir):
    """``sora train --target-ratio 0.5``, SIGKILLed after checkpoint-4 of 12 steps (mid-ramp), then ``--resume``:
    metrics, adapter tensors and every log row (xi, planned_params, nonzero_params...) equal the uninterrupted run's
    bit for bit, and metrics.json holds the target and the count reached."""
    budget = ["--target-ratio", "0.5"]
    reference = tmp_path / "reference"
    result = _train(reference, glue_dir, *budget)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "run"
    _kill_after_checkpoint(out, glue_dir, 4, *budget)
    result = _train(out, glue_dir, *budget, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_run(out, reference)
    metrics = json.loads((out / "metrics.json").read_text())
    target, nonzero = metrics["target_params"], metrics["nonzero_params"]
    assert metrics["hyperparameters"]["target_ratio"] == 0.5
    assert abs(nonzero - target) <= 0.05 * target
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["planned_params"] for row in log if "planned_params" in row][-1] == target


def test_a_schedule_of_budgets_lands_each_stage(tmp_path, glue_dir):
    """``sora schedule --target-list 0.8,0.4``: each stage ends at its own budget, counted from the r_max adapter."""
    saved = run_schedule(_config(tmp_path / "run"), [0.5, 0.5], 1.0, targets=[0.8, 0.4])
    assert json.loads((tmp_path / "run" / "schedule.json").read_text()) == saved, "it returns what schedule.json holds"
    rows = saved["stages"]
    assert saved["schedule"] == "targets" and saved["targets"] == [0.8, 0.4]
    full = rows[0]["target_params"] / 0.8
    for row, ratio in zip(rows, (0.8, 0.4), strict=True):
        assert abs(row["target_params"] - ratio * full) <= 1
        largest_rank = 384 + 1536  # MiniLM's intermediate / output modules
        assert row["target_params"] - largest_rank < row["nonzero_params"] <= row["target_params"], row
    assert saved["stages"] == rows


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_ratio": 0.0}, "target_ratio must be in (0, 1], got 0.0"),
        ({"target_ratio": 1.5}, "target_ratio must be in (0, 1], got 1.5"),
        ({"target_ratio": float("nan")}, "target_ratio must be in (0, 1], got nan"),
        ({"target_params": -5}, "target_params must be a whole number >= 1, got -5"),
        ({"target_params": 10**9}, "target_params 1,000,000,000 is more than the r_max adapter holds (14,336)"),
        ({"target_params": 10}, "a budget of 10 parameters is smaller than one rank (64): nothing fits"),
        ({"target_ratio": 0.5, "target_params": 100}, "exactly one of target_ratio and target_params"),
        ({}, "exactly one of target_ratio and target_params"),
    ],
)
def test_impossible_budgets_are_one_clear_error(kwargs, message):
    model = _sora_model()
    optimizer = sora.SoraOptimizer(model, lr=1e-3)
    with pytest.raises(sora.SoraError) as info:
        sora.SparsityBudget(**kwargs).attach(model, optimizer, 10)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--method", "lora", "--target-ratio", "0.5"], "are for --method sora, not 'lora'"),
        (["train", "--target-ratio", "0.5", "--target-params", "1000"], "not allowed with argument --target-ratio"),
        (["train", "--target-ratio", "-1"], "target_ratio must be in (0, 1], got -1.0"),
        (["schedule", "--target-list", "0.9,x"], "--target-list takes comma-separated fractions"),
        (["schedule", "--target-list", "0.9,0.5", "--xi-list", "0.1,0.2"], "give --target-list or --xi-list"),
    ],
)
def test_cli_budget_errors_are_one_line_and_write_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*argv, "--task", "rte", "--output-dir", str(out)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("sora: error:") and message in errors[0], errors
    assert not out.exists()


def test_a_contribution_budget_prunes_by_g_times_the_norms_of_b_and_a():
    """score="contribution": the top-up keeps the ranks of largest |g_i|·‖B_i‖·‖A_i‖ and leaves their gates as they
    are; a rank whose B column is zero dies first however large its gate."""
    model = _sora_model(gate_init="randn")  # gates named: the budget keeps them as they are
    with torch.no_grad():
        for module in sora.modules.lora_modules(model):
            module.lora_b.weight.normal_()
    optimizer = sora.SoraOptimizer(model, lr=1e-2)
    first = sora.modules.lora_modules(model)[0]
    with torch.no_grad():
        first.gate[0] = 100.0  # the largest gate of all ...
        first.lora_b.weight[:, 0] = 0.0  # ... on a rank that contributes nothing
    before = {id(g): g.detach().clone() for g in gates(model)}
    target = sora.SparsityBudget(target_ratio=0.5, warmup=0.0, end=0.01, score="contribution").attach(
        model, optimizer, 10
    )
    with pytest.raises(sora.SoraError, match="budget_step\\(optimizer, model\\)"):
        sora.budget_step(optimizer)
    sora.budget_step(optimizer, model)
    assert sora.count_parameters(model)["nonzero"] <= target
    assert first.gate[0] == 0.0
    for g in gates(model):  # survivors keep their values: a hard cut, not a soft threshold
        alive = g != 0
        assert torch.equal(g[alive], before[id(g)][alive])


def test_budget_score_needs_a_budget(tmp_path):
    with pytest.raises(sora.SoraError, match="--budget-score .* needs --target-ratio"):
        sora.train.TrainConfig(task="rte", output_dir=str(tmp_path), budget_score="contribution")
    with pytest.raises(sora.SoraError, match="score must be one of gate, contribution"):
        sora.SparsityBudget(target_ratio=0.5, score="norm")


def test_a_budget_lets_the_data_choose_by_default_and_keeps_the_papers_choice_on_request(tmp_path):
    """Unbudgeted runs start their gates N(0, 1) as the paper does; a budget starts them equal and tops up by
    contribution (what the allocation study chose), unless told otherwise."""
    config = functools.partial(sora.train.TrainConfig, task="rte", output_dir=str(tmp_path))
    plain, budgeted = config(), config(target_ratio=0.5)
    assert (plain.gate_init, plain.budget_score) == ("randn", None)
    assert (budgeted.gate_init, budgeted.budget_score) == (1.0, "contribution")
    paper = config(target_params=1000, gate_init="randn", budget_score="gate")
    assert (paper.gate_init, paper.budget_score) == ("randn", "gate")
    assert sora.train.TrainConfig(**budgeted.__dict__).hyperparameters() == budgeted.hyperparameters()  # resume


def test_the_python_apis_budget_starts_the_gates_as_sora_train_does_and_the_papers_is_one_argument_away():
    """``SoraConfig()`` with ``SparsityBudget(target_ratio=...)``, as ``sora train --target-ratio``: gates start at
    1.0 (in the model, its config and the optimizer's record), the top-up ranks by contribution, and the survivors'
    overlap with the largest initial gates is chance; ``score="gate"`` keeps the paper's N(0, 1) gates, whose
    survivors are the largest initial ones. A ``gate_init`` named in the config, or a budget attached after a step,
    keeps the gates."""
    results = {}
    for score in ("contribution", "gate"):
        model = _sora_model()
        drawn = torch.cat([g.detach().clone() for g in gates(model)])
        _, optimizer = _train_to_budget(model, 60, 0.5, "linear", score=score)
        initial, final = sora.allocation.gate_vectors(model, optimizer)
        results[score] = sora.allocation.init_overlap(initial, final)
        learned = score == "contribution"
        assert torch.equal(initial, torch.ones_like(initial) if learned else drawn), score
        assert model.sora_config.gate_init == (1.0 if learned else None)
        assert optimizer.gate_group["budget_score"] == score
    learned, paper = results["contribution"], results["gate"]
    assert learned["overlap"] == pytest.approx(learned["chance"]) and 0.4 < learned["chance"] < 0.6, learned
    assert paper["overlap"] > paper["chance"] + 0.2, paper

    named, stepped = _sora_model(gate_init="randn"), _sora_model()
    for model in (named, stepped):
        optimizer = sora.SoraOptimizer(model, lr=1e-2)
        if model is stepped:
            ids, labels = _data()
            model(input_ids=ids[:BATCH], labels=labels[:BATCH]).loss.backward()
            optimizer.step()
        before = torch.cat([g.detach().clone() for g in gates(model)])
        sora.SparsityBudget(target_ratio=0.5).attach(model, optimizer, 10)
        assert torch.equal(torch.cat([g.detach() for g in gates(model)]), before)
