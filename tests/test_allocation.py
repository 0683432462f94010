"""sora.allocation: the share of survivors owed to the initialisation, on cases whose answer is known, and in a run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sora.allocation import init_overlap, survivor_overlap
from sora.cli import main


def test_survivors_that_started_largest_overlap_fully_and_the_smallest_not_at_all():
    initial = torch.tensor([5.0, -4.0, 3.0, 2.0, -1.0, 0.5])
    largest = torch.tensor([0.1, -0.2, 0.3, 0.0, 0.0, 0.0])  # the three largest |g| survive (signs do not matter)
    smallest = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert init_overlap(initial, largest) == {"overlap": 1.0, "chance": 0.5, "survivors": 3, "gates": 6}
    assert init_overlap(initial, smallest)["overlap"] == 0.0
    assert init_overlap(initial, torch.tensor([1.0, 0, 0, 1.0, 0, 0]))["overlap"] == 0.5  # one of two in the top 2


def test_a_constant_initialisation_gives_exactly_the_chance_level():
    final = torch.tensor([0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 0.0])
    result = init_overlap(torch.ones(8), final)
    assert result["overlap"] == pytest.approx(3 / 8) and result["chance"] == 3 / 8
    # ties at the k-th value share the places left: 2 entries above, 2 tied for the one place left
    tied = init_overlap(torch.tensor([3.0, 2.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 1.0, 1.0]))
    assert tied["overlap"] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_no_survivor_and_survivor_overlap():
    assert init_overlap(torch.ones(4), torch.zeros(4))["overlap"] == 0.0
    a, b = torch.tensor([1.0, 1, 0, 0]), torch.tensor([1.0, 0, 1, 0])
    assert survivor_overlap(a, b) == {"overlap": 0.5, "chance": 0.5}
    assert survivor_overlap(a, a)["overlap"] == 1.0


def test_a_sora_run_records_its_allocation(tmp_path, glue_dir):
    """metrics.json's allocation is init_overlap of the gates the run saves; a gate seed changes the gates alone."""
    common = ["train", "--task", "rte", "--data-dir", str(glue_dir), "--max-train-samples", "32"]
    common += ["--max-eval-samples", "16", "--max-seq-length", "32", "--epochs", "1", "--r", "4"]
    common += ["--xi", "0.3", "--threshold", "constant", "--batch-size", "16"]
    gates = {}
    for seed in (1, 2):
        out = tmp_path / f"gate-seed-{seed}"
        assert main([*common, "--gate-seed", str(seed), "--output-dir", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        gates[seed] = load_file(str(out / "gates.safetensors"))
        assert metrics["allocation"] == init_overlap(gates[seed]["initial"], gates[seed]["final"])
        assert metrics["allocation"]["survivors"] == sum(metrics["ranks"].values())
        assert metrics["allocation"]["gates"] == 4 * len(metrics["ranks"])
    assert not torch.equal(gates[1]["initial"], gates[2]["initial"])
