"""### Why default runs stayed at chance: the longer runs that stayed at chance, again with the pooler trained."""

from __future__ import annotations

from ..load import Results, Runs, load, score
from ..markdown import METHOD_NAMES, TASK_NAMES, table, trace_text


def head_section(head: Runs, long: Runs) -> str:
    """The controlled test of the cause: the longer runs that stayed at chance, again with the pooler trained."""
    rows = []
    for name, r in sorted(head.items()):
        before = long.get(name)
        if before is None:
            continue
        rows.append(
            [TASK_NAMES[r["task"]], METHOD_NAMES[r["method"]], str(r["seed"]), f"{score(before):.1f}",
             f"{score(r):.1f}", trace_text(before), trace_text(r)]
        )  # fmt: skip
    if not rows:
        return "Not measured: `python benchmarks/glue.py head`."
    return (
        "The longer runs (2 epochs, batch 16, max length 64, lr 1e-3, the final model scored) that stayed at chance "
        "while another seed of the same task and method learned, run again with the same settings, seed and data; "
        "the one change is the head: the pooler trains (and is exported) with the classifier.\n\n"
        + table(
            ["task", "method", "seed", "pooler frozen", "pooler trained", "trace, frozen", "trace, trained"],
            rows,
            "lllrrll",
        )
    )


# A reading of the results that the numbers above support (checked against the committed JSON files)
HEAD_NOTE = (
    "Reading: BERT's classifier reads the [CLS] token through the pooler (dense + tanh). The embedded MiniLM is a "
    "sentence encoder trained with mean pooling, so neither its [CLS] state nor its pooler was trained for what the "
    "classifier asks of them; with the pooler frozen, the only path from the task to the [CLS] feature was the "
    "adapters, and at lr 1e-3 some seeds moved the representation to a constant (the loss rose early, then the "
    "gradients faded). Trained, the pooler adapts with the classifier from the first step. A mean-pooling head "
    "(what this backbone was trained with, per its sentence-transformers config) was not measured: it is no "
    "standard transformers head, so a plain `peft` + transformers user reloading the adapter would get other "
    "outputs; the recipe trains the standard head instead, which works for every BERT, RoBERTa, DeBERTa-v2 and "
    "ELECTRA model (tests/test_heads.py)."
)


def render(res: Results) -> str:
    return "\n".join(
        [
            "### Why default runs stayed at chance: the frozen pooler\n",
            head_section(load("head"), res.long_all) + "\n",
            HEAD_NOTE + "\n",
        ]
    )
