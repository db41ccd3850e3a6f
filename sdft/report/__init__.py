"""The human side of every command: rich tables, report.md and the PNG plots, built from a results dict alone.

  format.py         THE number formatter (fmt: '0.512 ± 0.031'), the signed delta, the decoding phrase
  markdown.py       the one markdown table of every report.md
  sequence_rows.py  what `sdft sequence`'s report, tables and plots read from its results (rows, labels, CIs)
  sequence.py       report.md of `sdft sequence` (+ plots.py: its PNGs, matplotlib imported on first use)
  prior.py          report.md of `sdft eval --prior-tasks` (sdft/prior.py runs that evaluation)
  tables.py         the rich tables the commands print
  ttt.py            `sdft ttt`'s comparison: its rich table and report.md
  collm.py          `sdft collm`'s table (base, expert, Co-LLM), report.md, collm.csv and collm.png

Each module imports only modules listed above it, never one below, so there is no cycle: plots.py builds on
format.py and sequence_rows.py, and only sequence.py imports plots.py. Every file is written by the one atomic
writer (sdft/files.py). Every output names the world its numbers come from: the embedded toy world's numbers
are a tiny model's on CPU.
"""

from sdft.report.format import decoding_phrase, fmt, fmt_delta
from sdft.report.prior import base_vs_now_rows, write_prior_report
from sdft.report.sequence import write_sequence_report
from sdft.report.tables import (check_table, comparison_table, eval_table, matrix_table, prior_table, tasks_table,
                                train_table)

__all__ = ["base_vs_now_rows", "check_table", "comparison_table", "decoding_phrase", "eval_table", "fmt", "fmt_delta",
           "matrix_table", "prior_table", "tasks_table", "train_table", "write_prior_report", "write_sequence_report"]
