"""Rank analysis, figures and the HTML/Markdown run report, on synthetic run folders."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sora.analysis import (
    DPI,
    FIG_HEIGHT,
    FIG_WIDTH,
    HEATMAP_ROW_HEIGHT,
    _type_labels,
    analyze_ranks,
    layer_sparsity,
    parse_module_name,
    plot_layer_sparsity,
    plot_live_ranks,
    plot_rank_heatmap,
    plot_schedule_curves,
    read_train_log,
    write_report,
)
from sora.errors import SoraError

BERT_TYPES = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]
R_MAX = 8
SMALL = (int(FIG_WIDTH * DPI), int(FIG_HEIGHT * DPI))
HEATMAP_12 = (int(FIG_WIDTH * DPI), int(max(FIG_HEIGHT, 1.5 + HEATMAP_ROW_HEIGHT * 12) * DPI))


def bert_ranks(uniform: int | None = None) -> dict[str, int]:
    """12 layers x 6 module types; rank (layer + 2 * type) % 9 unless ``uniform`` is given."""
    return {
        f"bert.encoder.layer.{layer}.{mtype}": (layer + 2 * index) % (R_MAX + 1) if uniform is None else uniform
        for layer in range(12)
        for index, mtype in enumerate(BERT_TYPES)
    }


def sora_log() -> list[dict]:
    rows = []
    for step in range(10, 210, 10):
        rows.append(
            {
                "step": step,
                "epoch": step / 100,
                "loss": 0.7 - step / 1000,
                "learning_rate": 1e-4,
                "xi": 1e-4,
                "live_ranks": 576 - step,
                "nonzero_params": 100_000 - 300 * step,
            }
        )
        if step % 100 == 0:
            rows.append({"step": step, "epoch": step / 100, "eval_accuracy": 0.5 + step / 1000})
    return rows


def schedule() -> dict:
    stages = [
        {
            "stage": i + 1,
            "xi": 1e-4 * (i + 1),
            "nonzero_params": 90_000 - 20_000 * i,
            "live_ranks": 500 - 90 * i,
            "ranks": {},
            "train": {"accuracy": 0.99 - 0.06 * i},
            "dev": {"accuracy": 0.62 + 0.01 * i - 0.008 * i * i},
        }
        for i in range(4)
    ]
    return {"task": "rte", "schedule": "linear", "primary_metric": "accuracy", "stages": stages}


def make_run(root: Path, name: str, method: str, seed: int = 0, log: bool = True, sched: bool = True) -> Path:
    """A run folder as ``sora train`` writes it (plus ``schedule.json`` for SoRA when ``sched``)."""
    run = root / name
    run.mkdir(parents=True)
    ranks = {"sora": bert_ranks(), "lora": bert_ranks(uniform=R_MAX)}.get(method, {})
    metrics = {
        "task": "rte",
        "method": method,
        "model": "bert-base-uncased",
        "seed": seed,
        "hyperparameters": {"r": R_MAX, "lora_alpha": 16, "xi": 1e-4, "lr": 1e-3, "epochs": 3},
        "eval": {"accuracy": 0.61733 + seed / 1000 if method == "sora" else 0.6029, "loss": 0.654321},
        "eval_final": {"accuracy": 0.6},
        "train_seconds": 1234.56,
        "seconds_per_epoch": 411.52,
        "trainable_params": 1_234_567,
        "nonzero_params": 345_678 if method == "sora" else 1_234_567,
        "ranks": ranks,
        "primary_metric": "accuracy",
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "ranks.json").write_text(json.dumps({"r_max": R_MAX if ranks else None, "ranks": ranks}))
    if log:
        rows = sora_log() if method == "sora" else [{"step": 10, "epoch": 0.1, "loss": 0.7, "learning_rate": 1e-4}]
        (run / "train_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if sched and method == "sora":
        (run / "schedule.json").write_text(json.dumps(schedule()))
    return run


def assert_png(source: Path | bytes, size: tuple[int, int]) -> None:
    """A real PNG of ``size`` (width, height) pixels showing more than a blank canvas."""
    data = source if isinstance(source, bytes) else source.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.size == size
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10
    assert len(np.unique(pixels.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1]))) > 50  # distinct colours


class _Tables(HTMLParser):
    """Collects every <table> of a page as rows of cell texts (header row included)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_tables(page: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def markdown_tables(text: str) -> list[list[list[str]]]:
    tables = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and all(line.startswith("|") for line in lines):
            rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
            tables.append([row for row in rows if set(row) != {"---"}])
    return tables


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bert.encoder.layer.0.attention.self.query", (0, "attention.self.query")),
        ("bert.encoder.layer.1.attention.output.dense", (1, "attention.output.dense")),
        ("bert.encoder.layer.11.output.dense", (11, "output.dense")),
        ("base_model.model.bert.encoder.layer.7.intermediate.dense", (7, "intermediate.dense")),
        ("transformer.h.3.attn.c_attn", (3, "attn.c_attn")),
        ("transformer.h.10.mlp.c_fc", (10, "mlp.c_fc")),
        ("model.layers.31.self_attn.q_proj", (31, "self_attn.q_proj")),
        ("model.layers.2.mlp.down_proj", (2, "mlp.down_proj")),
        ("vit.blocks.4.attn.qkv", (4, "attn.qkv")),
        ("classifier.dense", (None, "classifier.dense")),
        ("model.graph.2.fc", (None, "model.graph.2.fc")),
    ],
)
def test_parse_module_name(name, expected):
    assert parse_module_name(name) == expected


def test_layer_1_and_layer_11_are_distinct():
    one = parse_module_name("bert.encoder.layer.1.output.dense")
    eleven = parse_module_name("bert.encoder.layer.11.output.dense")
    assert one != eleven
    assert (one[0], eleven[0]) == (1, 11)
    assert layer_sparsity({"x.layer.1.fc": 0, "x.layer.11.fc": 4}, 4) == {1: 1.0, 11: 0.0}


def test_layer_sparsity_by_hand():
    ranks = {
        "bert.encoder.layer.0.attention.self.query": 8,
        "bert.encoder.layer.0.attention.self.value": 0,
        "bert.encoder.layer.1.attention.self.query": 2,
        "bert.encoder.layer.1.attention.self.value": 4,
        "bert.encoder.layer.11.attention.self.query": 8,
        "bert.encoder.layer.11.attention.self.value": 7,
        "classifier": 3,
    }
    # layer 0: 1 - 8/16; layer 1: 1 - 6/16; layer 11: 1 - 15/16; the classifier has no layer.
    assert layer_sparsity(ranks, 8) == {0: 0.5, 1: 0.625, 11: 0.0625}


def test_layer_sparsity_of_the_bert_fixture():
    sparsity = layer_sparsity(bert_ranks(), R_MAX)
    assert list(sparsity) == list(range(12))
    for layer, share in sparsity.items():
        live = sum((layer + 2 * index) % 9 for index in range(6))
        assert share == pytest.approx(1 - live / 48)
    assert layer_sparsity(bert_ranks(uniform=R_MAX), R_MAX) == dict.fromkeys(range(12), 0.0)
    assert layer_sparsity(bert_ranks(uniform=0), R_MAX) == dict.fromkeys(range(12), 1.0)


@pytest.mark.parametrize(
    ("ranks", "r_max", "message"),
    [
        ({}, 8, "no ranks"),
        ({"bert.encoder.layer.0.output.dense": 9}, 8, "output.dense"),
        ({"bert.encoder.layer.0.output.dense": -1}, 8, "output.dense"),
        ({"bert.encoder.layer.0.output.dense": 2.5}, 8, "output.dense"),
        ({"bert.encoder.layer.0.output.dense": 2}, 0, "r_max"),
    ],
)
def test_layer_sparsity_rejects_bad_input(ranks, r_max, message):
    with pytest.raises(SoraError, match=message):
        layer_sparsity(ranks, r_max)


def test_heatmap_labels_are_short_and_distinct():
    assert _type_labels(BERT_TYPES) == ["query", "key", "value", "attn.out", "intermediate", "out"]
    assert _type_labels(["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]) == [
        "c_attn",
        "attn.c_proj",
        "c_fc",
        "mlp.c_proj",
    ]
    llama = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj"]
    assert _type_labels(llama) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]
    assert _type_labels(["a.dense", "b.dense.self"]) == ["a", "b"]
    assert _type_labels(["x.dense", "x.self.dense"]) == [
        "x.dense",
        "x.self.dense",
    ]  # would collide: keep full


def test_plot_functions_write_real_pngs(tmp_path):
    ranks = bert_ranks()
    assert_png(plot_rank_heatmap(ranks, R_MAX, tmp_path / "heat.png"), HEATMAP_12)
    assert_png(plot_layer_sparsity(layer_sparsity(ranks, R_MAX), tmp_path / "bars.png"), SMALL)
    assert_png(plot_live_ranks(sora_log(), tmp_path / "live.png"), SMALL)
    halved = [dict(row, live_ranks=row["live_ranks"] // 2) for row in sora_log() if "live_ranks" in row]
    two_runs = {"a": sora_log(), "b": halved}
    assert_png(plot_live_ranks(two_runs, tmp_path / "live2.png", show_params=False), SMALL)
    assert_png(plot_schedule_curves(schedule(), tmp_path / "sched.png"), SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bars.png",
        "heat.png",
        "live.png",
        "live2.png",
        "sched.png",
    ]


def test_heatmap_puts_unlayered_modules_in_an_extra_row(tmp_path):
    ranks = {**bert_ranks(), "classifier.dense": 5}
    size = (int(FIG_WIDTH * DPI), int(max(FIG_HEIGHT, 1.5 + HEATMAP_ROW_HEIGHT * 13) * DPI))
    assert_png(plot_rank_heatmap(ranks, R_MAX, tmp_path / "heat.png"), size)


def test_plot_errors(tmp_path):
    with pytest.raises(SoraError, match="live_ranks"):
        plot_live_ranks([{"step": 1, "loss": 0.5}], tmp_path / "x.png")
    with pytest.raises(SoraError, match="stages"):
        plot_schedule_curves({"primary_metric": "accuracy", "stages": []}, tmp_path / "x.png")
    with pytest.raises(SoraError, match="layer index"):
        plot_layer_sparsity({}, tmp_path / "x.png")
    with pytest.raises(SoraError, match="same heatmap cell"):
        plot_rank_heatmap({"encoder.layer.0.fc": 1, "decoder.layer.0.fc": 2}, 4, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_analyze_ranks_writes_heatmap_and_sparsity(tmp_path):
    run = make_run(tmp_path, "sora_s0", "sora")
    result = analyze_ranks(run)
    assert result["ranks"] == bert_ranks() and result["r_max"] == R_MAX
    assert result["layer_sparsity"] == layer_sparsity(bert_ranks(), R_MAX)
    saved = json.loads((run / "layer_sparsity.json").read_text())
    assert saved["r_max"] == R_MAX
    assert {int(layer): share for layer, share in saved["layer_sparsity"].items()} == result["layer_sparsity"]
    assert_png(run / "ranks.png", HEATMAP_12)
    assert_png(run / "layer_sparsity.png", SMALL)


def test_analyze_ranks_takes_r_max_from_hyperparameters_when_null(tmp_path):
    run = make_run(tmp_path, "lora_s0", "lora")
    (run / "ranks.json").write_text(json.dumps({"r_max": None, "ranks": bert_ranks(uniform=4)}))
    assert analyze_ranks(run)["layer_sparsity"] == dict.fromkeys(range(12), 0.5)


def test_analyze_ranks_errors(tmp_path):
    with pytest.raises(SoraError, match="no ranks"):
        analyze_ranks(make_run(tmp_path, "full_s0", "full"))
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(SoraError, match="has no ranks.json"):
        analyze_ranks(bare)


def test_read_train_log_names_a_bad_line(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2\n')
    with pytest.raises(SoraError, match="line 3"):
        read_train_log(path)


def test_write_report(tmp_path):
    runs = [
        make_run(tmp_path, "sora_s0", "sora"),
        make_run(tmp_path, "sora_s1", "sora", seed=1),
        make_run(tmp_path, "lora_s0", "lora"),
    ]
    html_path = write_report(runs, tmp_path / "out" / "report.html")
    assert html_path == tmp_path / "out" / "report.html"
    page = html_path.read_text()

    # Self-contained: every src/href is a data URI, no stylesheet or script files, images decode as PNGs.
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", page)
    assert "<link" not in page and "<script" not in page and "url(" not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2 * 2 + 1 + 2  # heatmap + sparsity per SoRA run, live ranks, schedule per SoRA run
    for encoded in images:
        data = base64.b64decode(encoded, validate=True)
        assert_png(data, Image.open(io.BytesIO(data)).size)
    for heading in (
        "Comparison",
        "Kept ranks of the SoRA runs",
        "Live ranks during training",
        "Sparsification schedules",
    ):
        assert f"<h2>{heading}</h2>" in page

    # The comparison table shows metrics.json's numbers as formatted; parse them back and compare.
    header, *rows = html_tables(page)[0]
    assert header == ["", "sora_s0", "sora_s1", "lora_s0"]
    table = {row[0]: row[1:] for row in rows}
    for column, run in enumerate(runs):
        metrics = json.loads((run / "metrics.json").read_text())
        assert table["task"][column] == metrics["task"]
        assert table["method"][column] == metrics["method"]
        assert int(table["seed"][column]) == metrics["seed"]
        dev = table["dev primary metric (kept checkpoint)"][column]
        assert dev == f"{metrics['eval'][metrics['primary_metric']]:.4f}"
        assert float(dev) == pytest.approx(metrics["eval"]["accuracy"], abs=5e-5)
        for key, value in metrics["eval"].items():
            assert re.fullmatch(r"-?\d+\.\d{4}", table[f"eval {key}"][column])
            assert float(table[f"eval {key}"][column]) == pytest.approx(value, abs=5e-5)
        assert int(table["trainable params"][column].replace(",", "")) == metrics["trainable_params"]
        assert int(table["non-zero params"][column].replace(",", "")) == metrics["nonzero_params"]
        assert float(table["train seconds"][column]) == pytest.approx(metrics["train_seconds"], abs=0.05)
        assert float(table["seconds per epoch"][column]) == pytest.approx(metrics["seconds_per_epoch"], abs=0.05)

    # The schedule table of each SoRA run.
    stage_header, *stage_rows = html_tables(page)[1]
    assert stage_header == ["stage", "xi", "non-zero params", "live ranks", "train accuracy", "dev accuracy"]
    for row, stage in zip(stage_rows, schedule()["stages"], strict=True):
        assert float(row[1]) == pytest.approx(stage["xi"])
        assert int(row[2].replace(",", "")) == stage["nonzero_params"]
        assert float(row[5]) == pytest.approx(stage["dev"]["accuracy"], abs=5e-5)

    # The Markdown twin: same tables, images as files under report_files/.
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert markdown_tables(markdown) == html_tables(page)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == len(images)
    for link in links:
        assert link.startswith("report_files/")
        assert_png(tmp_path / "out" / link, Image.open(tmp_path / "out" / link).size)
    assert (tmp_path / "out" / "report_files" / "00_sora_s0_ranks.png").is_file()
    assert_png(tmp_path / "out" / "report_files" / "00_sora_s0_ranks.png", HEATMAP_12)


def test_report_omits_sections_for_missing_optional_files(tmp_path):
    runs = [make_run(tmp_path, "sora_s0", "sora", log=False, sched=False), make_run(tmp_path, "lora", "lora")]
    page = write_report(runs, tmp_path / "r.html").read_text()
    assert "Kept ranks of the SoRA runs" in page
    assert "Live ranks during training" not in page and "Sparsification schedules" not in page
    assert page.count("data:image/png;base64,") == 2
    only_lora = write_report([runs[1]], tmp_path / "lora.html").read_text()
    assert "data:image" not in only_lora and len(html_tables(only_lora)) == 1


def test_report_names_runs_by_path_when_folder_names_repeat(tmp_path):
    runs = [make_run(tmp_path / "a", "seed0", "lora"), make_run(tmp_path / "b", "seed0", "lora")]
    header = html_tables(write_report(runs, tmp_path / "r.html").read_text())[0][0]
    assert header == ["", str(runs[0]), str(runs[1])]


def test_report_errors(tmp_path):
    run = make_run(tmp_path, "sora_s0", "sora")
    (run / "metrics.json").unlink()
    with pytest.raises(SoraError, match="has no metrics.json"):
        write_report([run], tmp_path / "r.html")
    with pytest.raises(SoraError, match="does not exist"):
        write_report([tmp_path / "nope"], tmp_path / "r.html")
    with pytest.raises(SoraError, match=r"\.html"):
        write_report([run], tmp_path / "r.md")
    with pytest.raises(SoraError, match="no run folders"):
        write_report([], tmp_path / "r.html")
    (run / "metrics.json").write_text(json.dumps({"method": "sora", "eval": {}}))
    (run / "ranks.json").write_text(json.dumps({"r_max": 8, "ranks": {}}))
    with pytest.raises(SoraError, match="no ranks"):
        write_report([run], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "r.md").exists()
