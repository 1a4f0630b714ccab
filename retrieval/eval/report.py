"""Markdown tables of results: one writer for the protocols' printouts and the benchmark reports."""

from __future__ import annotations


def markdown_table(header: list[str], rows: list[list], digits: int = 3) -> str:
    def cell(value) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
