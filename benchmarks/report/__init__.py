"""BENCHMARKS.md from the result JSONs under benchmarks/results/ (``python benchmarks/build_report.py``).

``load``: reading the results; ``stats``: paired gaps, Student-t intervals and the verdict rule; ``markdown``: names,
number formats and tables; ``sections``: one module per section of BENCHMARKS.md, each with ``render(results)``;
``build``: the sections in order, written to the Markdown file. Modules import ``glue`` (benchmarks/glue.py, the
runner's settings) and ``report`` itself from benchmarks/, which build_report.py puts on ``sys.path``.
"""
