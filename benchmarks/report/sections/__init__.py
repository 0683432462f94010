"""One module per section of BENCHMARKS.md, each with ``render(results) -> str`` (the section's Markdown, heading
included); ``report.build.SECTIONS`` puts them in order."""
