"""benchmarks/decoder.py: the data builder on GLUE-format fixture TSVs (record shapes, one-word answers by label,
seeded determinism, text sentences apart from the chat ones, records too long skipped), the per-task scorer on a
tiny random Llama (exact match and loss against the model's own greedy next token), and the report sections (the
rows, the front) rendered from fake results, their verdicts included."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from conftest import llama, load_benchmark, word_tokenizer

from sora import SoraError
from sora.tasks.causal_lm import encode_record

load_benchmark("build_report")  # puts benchmarks/ on sys.path, as running the script does
decoder = load_benchmark("decoder")

from glue import FRONT_TARGETS  # noqa: E402
from report.load import load  # noqa: E402
from report.sections import decoder as section  # noqa: E402
from report.sections import decoder_front  # noqa: E402

SIZES = decoder.Sizes(train=4, validation=2, dev=3)
MAX_SEQ_LENGTH = 64
LONG = " ".join(["long"] * 80)  # an RTE premise no record of MAX_SEQ_LENGTH tokens holds


def _write(path, header, rows, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header), *("\t".join(map(str, row)) for row in rows)]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """SST-2, RTE and MRPC in the original GLUE format; every text says its label (great/dull, true/false,
    alike/apart). SST-2 train: 10 sentences 3 times each (duplicate rows) and phrases under 5 words; RTE dev: two
    pairs too long for MAX_SEQ_LENGTH besides the three rows the dev records need."""
    root = tmp_path_factory.mktemp("glue")
    sst2_train = [(f"a {'great' if i % 2 else 'dull'} film number {i} here ", i % 2) for i in range(10)] * 3
    sst2_train += [(f"short {i} ", i % 2) for i in range(6)]
    sst2_dev = [(f"the {'great' if i % 2 else 'dull'} movie number {i} there ", i % 2) for i in range(8)]
    _write(root / "SST-2" / "train.tsv", ("sentence", "label"), sst2_train)
    _write(root / "SST-2" / "dev.tsv", ("sentence", "label"), sst2_dev)

    label = ("entailment", "not_entailment")
    rte = [(i, f"premise {i} says it", f"claim {i} is {'false' if i % 2 else 'true'}", label[i % 2]) for i in range(8)]
    header = ("index", "sentence1", "sentence2", "label")
    _write(root / "RTE" / "train.tsv", header, rte)
    _write(
        root / "RTE" / "dev.tsv",
        header,
        [rte[0], (8, LONG, "claim is true", "entailment"), *rte[1:3], (9, LONG, "x", "entailment")],
    )
    mrpc = [(i % 2, 100 + i, 200 + i, f"story {i} told", f"story {i} in {'alike' if i % 2 else 'apart'} words")
            for i in range(8)]  # fmt: skip
    header = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
    _write(root / "MRPC" / "train.tsv", header, mrpc, bom=True)
    _write(root / "MRPC" / "dev.tsv", header, mrpc[:4], bom=True)
    return root


def _fits():
    return decoder.record_fits(word_tokenizer(), MAX_SEQ_LENGTH)


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _user(record):
    return record["messages"][0]["content"]


def _answer(record):
    return record["messages"][1]["content"]


def _task(record):
    """The chat task whose prompt opens ``record`` (None: a text record)."""
    if "messages" not in record:
        return None
    return next(t for t, prompt in decoder.PROMPTS.items() if _user(record).startswith(prompt[:9]))


@pytest.fixture(scope="module")
def built(glue_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return folder, decoder.build_data(glue_dir, folder, _fits(), SIZES)


def test_records_have_the_chat_and_text_shapes_with_one_word_answers_by_label(built):
    folder, summary = built
    tasks = ("sst2", "rte", "mrpc", "text")
    assert summary["records"] == {
        "train": dict.fromkeys(tasks, 4),
        "validation": dict.fromkeys(tasks, 2),
        "dev": dict.fromkeys(tasks, 3),
    }
    train, validation = _read(folder / decoder.TRAIN_FILE), _read(folder / decoder.VALIDATION_FILE)
    assert len(train) == 16 and len(validation) == 8
    # the label's word in the text decides the answer: SST-2 great/dull, RTE true/false, MRPC same/other
    said = {"sst2": ("great", "positive", "negative"), "rte": ("true", "yes", "no"), "mrpc": ("alike", "yes", "no")}
    for task, (word, yes, no) in said.items():
        dev = _read(folder / decoder.dev_file(task))
        chat = dev + [r for r in train + validation if _task(r) == task]
        assert len(chat) == 9 and all(_task(r) == task for r in dev)
        for record in chat:
            assert set(record) == {"messages"} and [m["role"] for m in record["messages"]] == ["user", "assistant"]
            assert _answer(record) == (yes if word in _user(record).split() else no)
        majority = summary["dev_majority"][task]
        assert majority["share"] == sum(_answer(r) == majority["answer"] for r in dev) / 3
    texts = [r for r in train + validation + _read(folder / decoder.dev_file("text")) if _task(r) is None]
    assert len(texts) == 9 and all(set(r) == {"text"} and r["text"] == r["text"].strip() for r in texts)
    assert [_task(r) for r in validation] == ["sst2", "rte", "mrpc", None] * 2  # interleaved in TASKS order


def test_text_sentences_are_apart_from_chat_ones_and_phrases_and_long_pairs_are_skipped(built):
    folder, summary = built
    every = [r for f in folder.glob("*.jsonl") for r in _read(f)]
    chat_sst2 = [_user(r) for r in every if _task(r) == "sst2"]
    texts = [r["text"] for r in every if "text" in r]
    assert chat_sst2 and texts and not any(text in prompt for text in texts for prompt in chat_sst2)
    assert not any("short" in json.dumps(r) or "long long" in json.dumps(r) for r in every)
    assert summary["too_long"]["rte"] >= 1 and summary["min_sst2_words"] == decoder.MIN_SST2_WORDS
    tokenizer = word_tokenizer()
    assert all(len(encode_record(r, tokenizer, 10_000, "f").input_ids) <= MAX_SEQ_LENGTH for r in every)
    trained, held_out = ({_user(r) for r in _read(folder / f) if _task(r) == "rte"}
                         for f in (decoder.TRAIN_FILE, decoder.VALIDATION_FILE))  # fmt: skip
    assert len(trained) == 4 and len(held_out) == 2 and not trained & held_out


def test_the_data_is_the_same_every_time_and_follows_the_seed(built, glue_dir, tmp_path, monkeypatch):
    folder, _ = built
    decoder.build_data(glue_dir, tmp_path / "again", _fits(), SIZES)
    for path in folder.iterdir():
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes()
    monkeypatch.setattr(decoder, "DATA_SEED", 1)
    decoder.build_data(glue_dir, tmp_path / "seed1", _fits(), SIZES)
    assert (tmp_path / "seed1" / decoder.TRAIN_FILE).read_bytes() != (folder / decoder.TRAIN_FILE).read_bytes()


def test_too_few_rows_is_one_line(glue_dir, tmp_path):
    with pytest.raises(SoraError, match=r"^rte validation: only 3 of the 4 records asked for fit"):
        decoder.build_data(glue_dir, tmp_path, _fits(), decoder.Sizes(train=4, validation=2, dev=4))


# ---------------------------------------------------------------------------------------------------------------
# the scorer

# A chat template without end-of-turn tokens: the answer span is the answer's one token, so the greedy generation of
# the span is the model's argmax after the prompt, which the test computes itself.
BARE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)


def test_the_scorer_matches_exactly_the_greedy_answer_and_scores_its_loss(tmp_path):
    tokenizer, model = word_tokenizer(BARE), llama(seed=1, initializer_range=0.2)
    specials = len(tokenizer.all_special_ids)
    with torch.no_grad():  # logit 0 for the special tokens and the ids past the vocabulary: the argmax is a word
        model.lm_head.weight[:specials] = 0
        model.lm_head.weight[len(tokenizer) :] = 0
    words = list("abcdefghijklmnop")
    right, wrong, losses = [], [], []
    for prompt in ("copy a b", "say c d e", "copy f", "say g h", "copy i j k", "say l"):
        probe = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "a"}]}
        example = encode_record(probe, tokenizer, 64, "probe")
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([example.input_ids[: example.prompt_length]])).logits[0, -1]
        token = tokenizer.convert_ids_to_tokens(int(logits.argmax()))
        other = next(w for w in words if w != token)
        right.append({"messages": [probe["messages"][0], {"role": "assistant", "content": token}]})
        wrong.append({"messages": [probe["messages"][0], {"role": "assistant", "content": other}]})
        losses.append(-torch.log_softmax(logits, -1)[tokenizer.convert_tokens_to_ids(token)].item())
    files = {"right": tmp_path / "right.jsonl", "wrong": tmp_path / "wrong.jsonl", "text": tmp_path / "text.jsonl"}
    for name, records in (("right", right), ("wrong", wrong), ("text", [{"text": "copy a b c"}, {"text": "say d"}])):
        files[name].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    scores = decoder.score_tasks(model, tokenizer, files, max_seq_length=64, batch_size=4)
    assert scores["right"]["exact_match"] == 1.0 and scores["wrong"]["exact_match"] == 0.0
    assert scores["right"]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    assert scores["right"]["answers"] == dict(Counter(_answer(r) for r in right).most_common(5))
    assert "exact_match" not in scores["text"]
    assert scores["text"]["perplexity"] == pytest.approx(math.exp(scores["text"]["loss"]))


# ---------------------------------------------------------------------------------------------------------------
# the report section

MODULES = [f"base_model.model.model.layers.{i}.{t}" for i in range(30) for t in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
    "mlp.down_proj")]  # fmt: skip
DATA = {
    "seed": 0,
    "sizes": {"train": 500, "validation": 32, "dev": 100},
    "min_sst2_words": 5,
    "max_seq_length": 192,
    "records": {s: dict.fromkeys(("sst2", "rte", "mrpc", "text"), n) for s, n in (("train", 500), ("dev", 100))},
    "too_long": {"sst2": 0, "rte": 95, "mrpc": 0},
    "dev_majority": {
        "sst2": {"answer": "positive", "share": 0.59},
        "rte": {"answer": "yes", "share": 0.51},
        "mrpc": {"answer": "yes", "share": 0.86},
    },
}
DATA["records"]["validation"] = dict.fromkeys(("sst2", "rte", "mrpc", "text"), 32)


def _result(label, seed, loss, exact=0.8, ranks=None):
    """A fake result: every task at ``loss`` and ``exact``."""
    tasks = {
        t: {"loss": loss, "perplexity": math.exp(loss), "exact_match": exact, "answers": {"No.": 60, "no\nyes": 40}}
        for t in decoder.CHAT_TASKS
    }
    tasks["text"] = {"loss": 3 * loss, "perplexity": math.exp(3 * loss)}
    result = {"variant": label, "seed": seed, "tasks": tasks, "data": DATA, "command": f"sora train # {label}"}
    if label != decoder.ZERO_SHOT:
        r = decoder.ROWS[label].get("r", 8)
        ranks = ranks or dict.fromkeys(MODULES, r)
        result.update(
            hyperparameters={"r": r, "lr": 1e-3, "epochs": 2.0, "batch_size": 16, "max_seq_length": 192},
            ranks=ranks, nonzero_params=1000 * sum(ranks.values()), adapter_bytes=2**20, steps=250,
            seconds_per_step=2.5 if label == "lora" else 2.75, loadavg_start=[1.0, 1.0, 1.0],
            machine={"cpu": "test cpu", "nproc": 2, "torch_threads": 1, "gpu": None},
        )  # fmt: skip
    return result


def _runs(tmp_path, results):
    folder = tmp_path / "decoder"
    folder.mkdir(exist_ok=True)
    for r in results:
        (folder / f"{decoder.run_name(r['variant'], r['seed'])}.json").write_text(json.dumps(r), encoding="utf-8")
    return load("decoder", root=tmp_path)


def test_the_section_renders_from_fake_results_and_says_not_measured_without(tmp_path):
    assert section.decoder_section({}, {}, tmp_path) == "Not measured: `python benchmarks/decoder.py`."
    # q_proj rank 8 in layers 0-9 and 0 further up, every other module type rank 2
    budget = {m: (8 if i // 7 < 10 else 0) if m.endswith("q_proj") else 2 for i, m in enumerate(MODULES)}
    runs = _runs(tmp_path, [_result("zero-shot", None, 2.0, 0.1), _result("sora-budget50", 0, 0.5, 0.9, budget)])
    text = section.decoder_section(runs, {}, tmp_path, tmp_path / "figures")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[2].startswith("| base model, zero-shot | — | 10.0 | 10.0 | 10.0 | 2.000 |")
    assert rows[3].startswith("| SoRA r_max=8, budget 0.5 | 1 | 90.0 | 90.0 | 90.0 | 0.500 |")
    assert (
        "With a lower dev loss on every task: **yes**; with a higher exact match on every chat task: **yes**." in text
    )
    assert "punctuation included): SST-2 `No.` 60, `no yes` 40; RTE `No.` 60" in text
    assert "SST-2 positive 59%" in text and "(drawn rows skipped: RTE 95)" in text
    assert (
        "exact match: SST-2 90% against `positive` 59% (every run 5+ points above it); RTE 90% against `yes` 51% "
        "(every run 5+ points above it); MRPC 90% against `yes` 86% (no run 5+ points above it). On MRPC the gain "
        "over the zero-shot base is the answer's form (one word), not the task" in text
    )
    assert "Verdict on why SoRA at a budget trails LoRA of its size: not yet" in text
    assert (tmp_path / "figures" / "ranks_sora-budget50_seed0.png").is_file()
    assert "q_proj 2.7, k_proj 2.0" in text and "(most in q_proj, least in k_proj)" in text
    assert "layers 0-9 2.9, layers 10-19 1.7, layers 20-29 1.7" in text


def _verdict_runs(tmp_path, losses):
    """Three seeds of the five compared rows, each row at its loss (small seed noise)."""
    results = [_result(label, s, loss * (1 + 0.001 * s)) for label, loss in losses.items() for s in decoder.SEEDS]
    return _runs(tmp_path, results)


@pytest.mark.parametrize(
    "losses, expected",
    [
        ((0.6, 0.5, 0.5, 0.5), "trails because of **the allocation** (the learned allocation beats"),
        ((0.6, 0.6, 0.5, 0.6), "trails because of **the scale** ("),
        ((0.6, 0.6, 0.5, 0.5), "**Neither the allocation nor the scale accounts for it**"),
        ((0.5, 0.5, 0.5, 0.5), "**SoRA does not trail LoRA of its size here**"),
    ],
)
def test_the_verdict_names_what_accounts_for_the_gap(tmp_path, losses, expected):
    """Losses of (sora-budget50, sora-budget50-learned, lora-r4, lora-r4-alpha8), the same on every task."""
    runs = _verdict_runs(
        tmp_path, dict(zip((section.BUDGETED, section.LEARNED, section.LORA, section.SCALED), losses, strict=True))
    )
    assert expected in section.verdict(runs)
    gaps = section.gap_lines(runs)
    assert gaps.count("\n- ") == 4 and "(within noise, 3 seeds)" in gaps


def test_a_level_verdict_names_the_single_tasks_behind(tmp_path):
    """Level on the chat tasks, SoRA at the budget behind LoRA r=4 (alpha 16) on the text task alone."""
    losses = {section.BUDGETED: 0.5, section.LEARNED: 0.5, section.LORA: 0.5, section.SCALED: 0.5}
    runs = _verdict_runs(tmp_path, losses)
    for run in runs.values():
        if run["method"] == section.BUDGETED:
            run["tasks"]["text"]["loss"] *= 1.1
    assert section.verdict(runs).endswith(
        "no gap for the allocation or the scale to explain (behind on a single task: SoRA r_max=8, budget 0.5 − "
        "LoRA r=4 on SST-2 text; SoRA r_max=8, budget 0.5 − LoRA r=4, alpha 8 on SST-2 text)."
    )


def test_the_decoder_front_pairs_each_stage_with_the_lora_row_of_its_size():
    """Three seeds: every stage 2 exact-match points under the LoRA row of its size on chat SST-2 and a 10% higher
    SST-2 text loss (100 ln 1.1 = 9.5% lower for LoRA): behind at each size with a row (50, 25, 12.5%; there is no
    r=6 row); the schedule's 4 stages of 100 s against a sweep of 4 rows of 300 s: 0.33."""
    rows, schedules = {}, []
    for seed in decoder.SEEDS:
        for label in decoder_front.SWEEP:
            rows[decoder.run_name(label, seed)] = {
                "seed": seed, "train_seconds": 300.0,
                "tasks": {"sst2": {"exact_match": 0.80 + 0.01 * seed}, "text": {"loss": 3.0}},
            }  # fmt: skip
        stage = {"sst2": {"exact_match": 0.78 + 0.01 * seed}, "text": {"loss": 3.3}}
        stages = [{"nonzero_params": 1000 * round(8 * t), "seconds": 100.0, "tasks": stage} for t in FRONT_TARGETS]
        schedules.append({"seed": seed, "stages": stages})
    table_rows, verdicts = decoder_front.front_rows(rows, schedules)
    assert table_rows[0] == ["75%", "6.0K", "79.0", "—", "—", f"{-100 * math.log(3.3):.1f}", "—", "—"]
    assert table_rows[1] == [
        "50% (LoRA r=4)", "4.0K", "79.0", "81.0", "-2.0 ± 0.0 (behind, 3 seeds)",
        f"{-100 * math.log(3.3):.1f}", f"{-100 * math.log(3.0):.1f}", "-9.5 ± 0.0 (behind, 3 seeds)",
    ]  # fmt: skip
    assert verdicts == [
        "- SST-2 exact match (points): 50% -2.0 ± 0.0 (behind, 3 seeds); 25% -2.0 ± 0.0 (behind, 3 seeds); "
        "12.5% -2.0 ± 0.0 (behind, 3 seeds).",
        "- SST-2 text dev loss (% lower): 50% -9.5 ± 0.0 (behind, 3 seeds); 25% -9.5 ± 0.0 (behind, 3 seeds); "
        "12.5% -9.5 ± 0.0 (behind, 3 seeds).",
    ]
    assert decoder_front.cost_text(rows, schedules) == "seed 0 0.33, seed 1 0.33, seed 2 0.33"
    assert decoder_front.cost_text({}, schedules) == ""
