"""Rebuild BENCHMARKS.md from the JSON results under benchmarks/results/ (nothing is re-run).

Sections: the machine, the paper's claims (holds / does not hold / not measured, with the numbers), the GLUE tables
(Table 1, 2, 4 analogs), the figures (Figure 3: the sparsifying scheduler; Figure 4: rank heatmaps, drawn here from
the runs' ``ranks``), the allocation study, instruction tuning on the embedded decoder (``benchmarks/decoder.py``),
what was tried for SoRA's gate settings, the learning-rate search, the overhead (and memory) benchmarks of
``benchmarks/overhead.py``, the GPU path, and the commands that produce every number.

Usage::

    python benchmarks/build_report.py  # writes BENCHMARKS.md, README.md's front block, benchmarks/results/glue/figures/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # glue (the runner's settings) and the report package

from report.build import OUTPUT, README, build  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args(argv)
    text, readme = build(Path(args.output))
    from sora import _io

    _io.write_text(args.output, text)
    _io.write_text(README, readme)
    print(f"wrote {args.output} and the front block of {README.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
