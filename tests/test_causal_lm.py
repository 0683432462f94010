"""Causal-LM tuning of decoders: record masking, bad records, real tiny runs of every method, LLM-server exports.

Everything runs offline on tiny random-weight models (GPT-2, Llama, Qwen2 configs) and a word-level tokenizer with a
ChatML chat template, both built here.
"""

import json
import math
import random

import pytest
import torch
from conftest import CHATML, gpt2, llama, qwen2, trained_like, word_tokenizer
from peft import PeftModel
from safetensors.torch import load_file

import sora
import sora.schedule
import sora.train
from sora import SoraError
from sora.cli import main
from sora.export import uniform_rank
from sora.tasks.causal_lm import IGNORE, encode_record, read_examples

LETTERS = "abcdef"
DECODERS = {"gpt2": gpt2, "llama": llama, "qwen2": qwen2}


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    """A tiny random Llama with its tokenizer, saved as a model folder (what --model takes).

    Its weights start 10x larger than the default 0.02 std: behind the final RMSNorm, a 0.02-std LM head of width 32
    spans logits of about +-0.6 only, which no adapter of the blocks can move.
    """
    folder = tmp_path_factory.mktemp("tiny-llama")
    llama(seed=1, initializer_range=0.2).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def _records(n: int, seed: int) -> list[dict]:
    """Copy tasks in the three record shapes."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        word = " ".join(rng.choices(LETTERS, k=3))
        if i % 3 == 0:
            rows.append({"prompt": f"copy {word}", "completion": word})
        elif i % 3 == 1:
            rows.append(
                {"messages": [{"role": "user", "content": f"say {word}"}, {"role": "assistant", "content": word}]}
            )
        else:
            rows.append({"text": f"copy {word} {word}"})
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return _write_jsonl(folder / "train.jsonl", _records(48, 0)), _write_jsonl(folder / "dev.jsonl", _records(12, 1))


def _tokens(tokenizer, ids, labels):
    return [tokenizer.convert_ids_to_tokens(t) for t, label in zip(ids, labels, strict=True) if label != IGNORE]


# ---------------------------------------------------------------------------------------------------------------
# masking


def test_prompt_tokens_are_masked_and_the_completion_ends_with_eos(tokenizer):
    example = encode_record({"prompt": "copy a b", "completion": "a b"}, tokenizer, 64, "f:1")
    assert _tokens(tokenizer, example.input_ids, example.labels) == ["a", "b", "</s>"]
    assert example.labels[:3] == [IGNORE] * 3 and example.prompt_length == 3 and example.reference == "a b"


def test_chat_records_train_the_assistant_turns_only(tokenizer):
    messages = [
        {"role": "system", "content": "say"},
        {"role": "user", "content": "copy a"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "copy b c"},
        {"role": "assistant", "content": "b c"},
    ]
    example = encode_record({"messages": messages}, tokenizer, 64, "f:1")
    assert _tokens(tokenizer, example.input_ids, example.labels) == ["a", "<|im_end|>", "b", "c", "<|im_end|>"]
    prompt = tokenizer.convert_ids_to_tokens(example.input_ids[: example.prompt_length])
    assert prompt[-2:] == ["<|im_start|>", "assistant"] and example.reference == "b c"


def test_text_records_train_every_token(tokenizer):
    example = encode_record({"text": "copy a a"}, tokenizer, 64, "f:1")
    assert example.labels == example.input_ids and example.prompt_length is None


def test_csv_files_hold_prompt_completion_and_text_records(tmp_path, tokenizer):
    path = tmp_path / "train.csv"
    path.write_text('prompt,completion\ncopy a b,a b\n"copy c, d",c d\n', encoding="utf-8")
    examples = read_examples(path, tokenizer, 64)
    assert [e.reference for e in examples] == ["a b", "c d"] and examples[1].where == f"{path}:3"
    (tmp_path / "text.csv").write_text("text\ncopy a a\n", encoding="utf-8")
    assert read_examples(tmp_path / "text.csv", tokenizer, 64)[0].prompt_length is None


def test_truncation_keeps_max_seq_length_tokens(tokenizer):
    example = encode_record({"prompt": "copy a", "completion": "a b c d e"}, tokenizer, 4, "f:1")
    assert len(example.input_ids) == len(example.labels) == 4


@pytest.mark.parametrize(
    "record, tokenizer_template, expected",
    [
        ({"prompt": "copy a"}, CHATML, "f.jsonl:2: no field 'completion'"),
        ({"prompt": "copy a", "completion": "  "}, CHATML, "f.jsonl:2: field 'completion' is empty"),
        ({"prompt": "copy a", "completion": 3}, CHATML, "f.jsonl:2: field 'completion' holds int"),
        ({"input": "a"}, CHATML, "f.jsonl:2: expected fields prompt and completion, messages, or text"),
        ({"messages": [{"role": "user", "content": "a"}]}, CHATML, "f.jsonl:2: messages need at least one assistant"),
        ({"messages": "a"}, CHATML, "f.jsonl:2: messages must be a non-empty list"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "a"}]},
            None,
            "f.jsonl:2: messages need a chat template",
        ),
        ({"prompt": "copy a b c d e f", "completion": "a"}, CHATML, "f.jsonl:2: no trainable token left"),
    ],
)
def test_bad_records_are_one_line_errors_naming_file_and_line(record, tokenizer_template, expected):
    with pytest.raises(SoraError) as e:
        encode_record(record, word_tokenizer(tokenizer_template), 6, "f.jsonl:2")
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def _train_args(decoder_dir, data_files, out, *extra):
    train_file, dev_file = data_files
    return [
        "train",
        "--task",
        "causal-lm",
        "--model",
        str(decoder_dir),
        "--train-file",
        str(train_file),
        "--validation-file",
        str(dev_file),
        "--output-dir",
        str(out),
        "--max-seq-length",
        "32",
        "--batch-size",
        "8",
        "--logging-steps",
        "1",
        "--r",
        "4",
        *extra,
    ]


def test_a_bad_record_in_the_cli_is_one_line_and_nothing_is_written(tmp_path, decoder_dir, data_files, capsys):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [*_records(3, 0), {"prompt": "copy a", "completion": ""}])
    out = tmp_path / "run"
    assert main(_train_args(decoder_dir, (bad, data_files[1]), out)) == 2
    assert capsys.readouterr().err == f"sora: error: {bad}:4: field 'completion' is empty\n"
    assert not out.exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        (["--method", "bitfit"], "task causal-lm trains with sora, lora, adalora, full, eva, not 'bitfit'"),
        (["--generate-eval", "2", "--validation-file", "TEXT"], "--generate-eval needs prompt/completion or messages"),
        (["--task", "rte", "--generate-eval", "2"], "--generate-eval is for task causal-lm"),
    ],
)
def test_impossible_requests_are_one_line(tmp_path, decoder_dir, data_files, capsys, change, expected):
    text_only = _write_jsonl(tmp_path / "text.jsonl", [{"text": "copy a b"}])
    args = [*_train_args(decoder_dir, data_files, tmp_path / "run"), *change]
    assert main([str(text_only) if a == "TEXT" else a for a in args]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_the_sparsifying_scheduler_tunes_a_decoder_and_picks_by_dev_loss(tmp_path, decoder_dir, data_files, capsys):
    """`sora schedule --task causal-lm --target-list 0.75,0.25`: each stage lands at its budget, is scored by dev and
    train loss (with exact match of generations), and its adapter reloads in plain PEFT with the dev loss the
    schedule recorded; the command names the smallest stage within 1% of the best dev loss."""
    out = tmp_path / "s"
    args = [a if a != "train" else "schedule" for a in _train_args(decoder_dir, data_files, out)]
    args += ["--target-list", "0.75,0.25", "--epochs-per-stage", "2", "--lr", "1e-2", "--generate-eval", "2"]
    assert main(args) == 0
    line, summary = capsys.readouterr().out.strip().splitlines()[-2:]
    schedule = json.loads((out / "schedule.json").read_text())
    rows = schedule["stages"]
    assert schedule["primary_metric"] == "loss" and [row["stage"] for row in rows] == [1, 2]
    for row in rows:
        assert set(row["dev"]) == {"loss", "perplexity", "exact_match"} and set(row["train"]) == {"loss", "perplexity"}
        assert row["nonzero_params"] <= row["target_params"]
    assert rows[1]["nonzero_params"] < rows[0]["nonzero_params"]
    pick = sora.schedule.pick_stage(schedule)
    assert json.loads(summary)["pick"] == pick["stage"]
    assert line.startswith(f"sora schedule on causal-lm: stage {pick['stage']} of 2 is the smallest within 1 % of")
    assert f"({pick['dev']['loss']:.3f})" in line
    adapter = out / "adapters" / "stage_2"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    scores = sora.train.evaluate_adapter(str(adapter), validation_file=str(data_files[1]))
    assert scores["loss"] == pytest.approx(rows[1]["dev"]["loss"], rel=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# training runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, decoder_dir, data_files):
    """A few dozen steps of every method on the tiny Llama; LoRA with gradient checkpointing and bf16."""
    base = tmp_path_factory.mktemp("runs")
    extra = {
        "sora": ["--generate-eval", "4", "--lr", "1e-2"],
        "lora": ["--gradient-checkpointing", "--bf16", "--lr", "1e-2"],
        "adalora": ["--lr", "3e-2"],
        "full": ["--lr", "3e-3"],
        "eva": ["--lr", "1e-2"],
    }
    for method, options in extra.items():
        args = _train_args(decoder_dir, data_files, base / method, "--method", method, "--epochs", "6", *options)
        assert main(args) == 0
    return base


@pytest.mark.parametrize("method", ["sora", "lora", "adalora", "full", "eva"])
def test_every_method_trains_and_the_masked_loss_falls(runs, method):
    out = runs / method
    losses = [
        row["loss"] for row in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in row
    ]
    assert len(losses) >= 30  # 48 records / batch 8 x 6 epochs = 36 steps
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["perplexity"] == pytest.approx(math.exp(metrics["eval"]["loss"]))
    assert metrics["eval"]["loss"] < math.log(100)  # better than uniform over the vocabulary
    config = json.loads((out / "adapter" / ("config.json" if method == "full" else "adapter_config.json")).read_text())
    if method != "full":
        assert config["task_type"] == "CAUSAL_LM" and not config.get("modules_to_save")


def test_generate_eval_writes_generations_with_exact_match(runs):
    rows = [json.loads(line) for line in (runs / "sora" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {"prompt", "reference", "generation", "exact_match"} <= set(rows[0])
    metrics = json.loads((runs / "sora" / "metrics.json").read_text())
    assert metrics["eval"]["exact_match"] == sum(r["exact_match"] for r in rows) / 4


def test_sora_eval_scores_a_causal_lm_run_as_training_did(runs, data_files, tmp_path, capsys):
    capsys.readouterr()
    output = tmp_path / "scores.json"
    args = ["eval", "--adapter", str(runs / "lora" / "adapter"), "--validation-file", str(data_files[1])]
    assert main([*args, "--output", str(output)]) == 0
    scores = json.loads(output.read_text())
    trained = json.loads((runs / "lora" / "metrics.json").read_text())["eval"]
    assert scores["loss"] == pytest.approx(trained["loss"], rel=1e-5)
    assert main(args[:3]) == 2
    assert "pass its --validation-file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# exports for LLM servers


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", list(DECODERS))
def test_pruned_adapter_reloads_merges_and_pads_to_a_uniform_rank(family, tmp_path):
    build = DECODERS[family]
    model = trained_like(sora.get_sora_model(build(), sora.SoraConfig(r_max=8, task_type="CAUSAL_LM")))
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(3))
    expected = _logits(model, ids)
    sora.prune(model).save_pretrained(tmp_path / "adapter")

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    ranks = {
        k: t.shape[0] for k, t in load_file(tmp_path / "adapter" / "adapter_model.safetensors").items() if "lora_A" in k
    }
    assert len(set(ranks.values())) > 1  # per-module ranks
    for pattern, rank in config["rank_pattern"].items():
        assert config["alpha_pattern"][pattern] / rank == pytest.approx(config["lora_alpha"] / config["r"])

    reloaded = PeftModel.from_pretrained(build(), tmp_path / "adapter").eval()
    torch.testing.assert_close(_logits(reloaded, ids), expected, rtol=1e-5, atol=1e-5)
    prompt = ids[:1, :4]
    unmerged = reloaded.generate(input_ids=prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    before = _logits(reloaded, unmerged)
    merged = reloaded.merge_and_unload()
    assert not isinstance(merged, PeftModel)
    # merging folds s·B·A into W: the same product summed in another order, so the logits agree to float rounding
    # (~1e-6 here), not bit for bit; greedy decoding still picks the same tokens because every pick leads the
    # runner-up by far more than that rounding (checked, so an exact token match is not luck of the kernel order)
    torch.testing.assert_close(_logits(merged, unmerged), before, rtol=1e-5, atol=1e-5)
    top2 = before[0, prompt.shape[1] - 1 : -1].topk(2).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-4
    assert torch.equal(merged.generate(input_ids=prompt, max_new_tokens=8, do_sample=False, pad_token_id=0), unmerged)

    padded = uniform_rank(tmp_path / "adapter", tmp_path / "uniform")
    config = json.loads((padded / "adapter_config.json").read_text())
    tensors = load_file(padded / "adapter_model.safetensors")
    assert not config["rank_pattern"] and not config["alpha_pattern"]
    assert config["r"] == max(ranks.values())
    assert {t.shape[0] for k, t in tensors.items() if "lora_A" in k} == {config["r"]}
    assert {t.shape[1] for k, t in tensors.items() if "lora_B" in k} == {config["r"]}
    assert config["lora_alpha"] / config["r"] == pytest.approx(16 / 8)
    uniform = PeftModel.from_pretrained(build(), padded).eval()
    torch.testing.assert_close(_logits(uniform, ids), expected, rtol=1e-5, atol=1e-5)
    # zero padding changes the matmul shapes (r instead of each module's rank) and so the summation order: the
    # padded and the per-module-rank adapter agree to float rounding (up to ~3e-6 on logits of ~0.4), not bit for bit
    per_module = _logits(PeftModel.from_pretrained(build(), tmp_path / "adapter").eval(), ids)
    torch.testing.assert_close(_logits(uniform, ids), per_module, rtol=1e-5, atol=1e-5)


def test_sora_export_cli_pads_a_run_and_refuses_a_full_model(runs, capsys):
    assert main(["export", "--uniform-rank", str(runs / "sora")]) == 0
    padded = runs / "sora" / "adapter-uniform-rank"
    assert capsys.readouterr().out.strip() == str(padded)
    assert not json.loads((padded / "adapter_config.json").read_text())["rank_pattern"]
    assert (padded / "sora_task.json").is_file()
    assert main(["export", "--uniform-rank", str(runs / "full")]) == 2
    assert "no LoRA adapter here" in capsys.readouterr().err
