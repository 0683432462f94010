"""SoRA in the user's own Trainer (issue 33): ``sora.SoraCallback`` and ``sora.create_sora_optimizer`` on
transformers' Trainer and TRL's SFTTrainer, with a tiny random Llama on CPU.

The callback steps the budget, stops on a NaN gate, puts SoRA's numbers in every training row (the history and what
``report_to`` sends), saves the pruned adapter, and refuses, before the first step, the scripts that would train
something else than SoRA."""

from __future__ import annotations

import pytest
import torch
from conftest import gates, llama, word_tokenizer
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import INTEGRATION_TO_CALLBACK
from trl import SFTConfig, SFTTrainer

import sora
from sora.bank import gate_parameters
from sora.budget import budget_target
from sora.optim import as_sora_optimizer

LOGGED = {"xi", "live_ranks", "nonzero_params", "planned_params", "budget_tau"}


def _model(seed: int = 0):
    return sora.get_sora_model(llama(seed, initializer_range=0.2), sora.SoraConfig(r_max=8, task_type="CAUSAL_LM"))


def _data(n: int = 32) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(6, 100, (n, 12), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in ids]


def _args(tmp_path, steps: int = 8, **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(tmp_path / "checkpoints"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    return TrainingArguments(**{**options, **overrides})


def _trainer(model, args, callback: sora.SoraCallback, **kwargs) -> Trainer:
    kwargs.setdefault("optimizers", (sora.create_sora_optimizer(model, args), None))
    return Trainer(model=model, args=args, train_dataset=_data(), callbacks=[callback], **kwargs)


def _logits(model) -> torch.Tensor:
    ids = torch.arange(6, 30).reshape(2, 12)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


class _Reporter(TrainerCallback):
    """A reporting integration (``report_to="reporter"``): what it is handed to report."""

    rows: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.rows.append(dict(logs))


def test_every_training_row_holds_soras_numbers_in_the_history_and_in_what_report_to_sends(tmp_path, monkeypatch):
    """The Trainer puts its reporting integrations before the callbacks it is given; SoraCallback moves ahead of
    them, so the reporter gets each training row with xi, live_ranks, nonzero_params and the budget's numbers, and
    the history holds the same. The budget, attached for the Trainer's max_steps, lands at its target."""
    monkeypatch.setitem(INTEGRATION_TO_CALLBACK, "reporter", _Reporter)
    monkeypatch.setattr(_Reporter, "rows", [])
    model = _model()
    callback = sora.SoraCallback(budget=sora.SparsityBudget(target_ratio=0.5))
    trainer = _trainer(model, _args(tmp_path, report_to=["reporter"]), callback)
    trainer.train()
    reported = [row for row in _Reporter.rows if "loss" in row]
    history = [row for row in trainer.state.log_history if "loss" in row]
    assert len(reported) == len(history) == 8
    assert all(LOGGED <= row.keys() for row in reported)
    assert [{k: row[k] for k in LOGGED} for row in history] == [{k: row[k] for k in LOGGED} for row in reported]
    assert trainer.callback_handler.callbacks[0] is callback
    target = budget_target(trainer.optimizer)
    counts = sora.count_parameters(model)
    assert history[-1]["nonzero_params"] == counts["nonzero"] and history[-1]["live_ranks"] == counts["live_ranks"]
    assert history[-1]["planned_params"] == target and target - 96 < counts["nonzero"] <= target  # 96: one rank


def test_a_gate_that_becomes_nan_stops_training_after_that_step(tmp_path, monkeypatch):
    real_step, calls = sora.SoraOptimizer.step, []

    def step_then_poison(self, *args, **kwargs):
        loss = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            self.gate_group["params"][0].data[0, 0] = float("nan")
        return loss

    monkeypatch.setattr(sora.SoraOptimizer, "step", step_then_poison)
    trainer = _trainer(_model(), _args(tmp_path), sora.SoraCallback())
    with pytest.raises(sora.SoraError, match=r"a SoRA gate became NaN/Inf at step 2: training stopped; no checkpoint"):
        trainer.train()
    assert len(calls) == 2


def test_a_budget_attached_for_other_steps_than_the_trainers_is_warned_about_and_follows_the_trainer(tmp_path):
    model = _model()
    args = _args(tmp_path, steps=6)
    optimizer = sora.create_sora_optimizer(model, args)
    target = sora.SparsityBudget(target_ratio=0.5).attach(model, optimizer, 20)
    trainer = _trainer(model, args, sora.SoraCallback(), optimizers=(optimizer, None))
    with pytest.warns(UserWarning, match=r"attached for 20 steps, but the Trainer runs 6 \(max_steps\): the budget"):
        trainer.train()
    assert optimizer.gate_group["budget_total_steps"] == optimizer.gate_group["budget_step"] == 6
    assert target - 96 < sora.count_parameters(model)["nonzero"] <= target


def test_the_pruned_adapter_saved_at_the_end_reloads_in_peft_and_the_trainers_model_stays(tmp_path):
    """``save_pruned_to`` with the optimizer built by the Trainer itself (``optimizer_cls_and_kwargs``: the way for a
    Trainer that refuses a ready optimizer, as under FSDP): the adapter reloads in plain PEFT with the trained model's
    outputs, and the Trainer's model is still the SoRA model, which trains on."""
    model, adapter = _model(), tmp_path / "adapter"
    args = _args(tmp_path)
    factory = (lambda: sora.create_sora_optimizer, {"args": args, "xi": 2.0})
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_data(),
        optimizer_cls_and_kwargs=factory,
        callbacks=[sora.SoraCallback(save_pruned_to=adapter)],
    )
    trainer.train()
    optimizer = as_sora_optimizer(trainer.optimizer)
    assert optimizer.xi == 2.0 and optimizer.defaults["lr"] == args.learning_rate
    counts = sora.count_parameters(model)
    assert 0 < counts["live_ranks"] < 8 * 14, "xi=2 prunes some ranks in 8 steps"
    reloaded = PeftModel.from_pretrained(llama(initializer_range=0.2), str(adapter))
    torch.testing.assert_close(_logits(reloaded), _logits(model), atol=1e-5, rtol=1e-5)
    assert sum(t.numel() for t in reloaded.state_dict().values() if t.ndim == 2 and t.shape != (100, 32)) > 0
    assert trainer.model is model and hasattr(model, "sora_config") and len(gates(model)) == 14
    model.train()
    trainer.train()  # trains on


def _sft(model, optimizer, tmp_path, **kwargs) -> SFTTrainer:
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=4, bf16=False, activation_checkpointing=False, report_to="none"
    )
    records = Dataset.from_list([{"text": "copy a b c a b c"}] * 8)
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=records,
        processing_class=word_tokenizer(),
        optimizers=(optimizer, None),
        callbacks=[sora.SoraCallback()],
        **kwargs,
    )


def _adamw_trainer(model, tmp_path):
    return _trainer(model, _args(tmp_path), sora.SoraCallback(), optimizers=(None, None))


def _other_models_optimizer(model, tmp_path):
    args = _args(tmp_path)
    return _trainer(model, args, sora.SoraCallback(), optimizers=(sora.create_sora_optimizer(_model(1), args), None))


def _peft_config_with_the_base(model, tmp_path):
    """TRL's SFTTrainer given the SoRA model's base and a peft_config: it wraps the base in a second PEFT model."""
    lora = LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
    return _sft(model.get_base_model(), sora.SoraOptimizer(model, lr=1e-2), tmp_path, peft_config=lora)


@pytest.mark.parametrize(
    "build, message",
    [
        (_adamw_trainer, "the Trainer's optimizer (AdamW) is not a sora.SoraOptimizer: it would train SoRA's gates"),
        (_other_models_optimizer, "the SoRA optimizer holds none of the gates of the model the Trainer trains"),
        (_peft_config_with_the_base, "the Trainer trains a model wrapped around the SoRA model (a peft_config"),
    ],
)
def test_a_script_that_would_train_something_else_than_sora_is_one_error_before_the_first_step(
    build, message, tmp_path
):
    model = _model()
    before = [g.detach().clone() for g in gate_parameters(model)]  # the tensors that train the gates
    trainer = build(model, tmp_path)
    with pytest.raises(sora.SoraError) as info:
        trainer.train()
    assert message in str(info.value) and "\n" not in str(info.value)
    assert trainer.state.global_step == 0
    assert all(torch.equal(g, b) for g, b in zip(gate_parameters(model), before, strict=True))


def test_trl_refuses_the_sora_model_itself_with_a_peft_config(tmp_path):
    """Given the SoRA model itself and a peft_config, TRL's SFTTrainer refuses at once (TRL's own check)."""
    model = _model()
    with pytest.raises(ValueError, match="PeftModel.*together with a .peft_config."):
        _sft(model, sora.SoraOptimizer(model, lr=1e-2), tmp_path, peft_config=LoraConfig(r=4, task_type="CAUSAL_LM"))


def test_sft_trainer_trains_the_budget_like_the_trainer(tmp_path):
    model = _model()
    optimizer = sora.SoraOptimizer(model, lr=1e-2)
    target = sora.SparsityBudget(target_ratio=0.5).attach(model, optimizer, 4)
    trainer = _sft(model, optimizer, tmp_path)
    trainer.train()
    assert target - 96 < sora.count_parameters(model)["nonzero"] <= target
    assert all(LOGGED <= row.keys() for row in trainer.state.log_history if "loss" in row)


def test_the_budget_callback_is_the_sora_callback():
    assert sora.BudgetCallback is sora.SoraCallback
