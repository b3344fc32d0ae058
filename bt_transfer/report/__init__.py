"""The report: result records (``bt_transfer.core.records``) aggregated over seeds (``aggregate``) beside the
paper's published rows (``paper``), rendered as Markdown, CSV and LaTeX (``render``) and plots (``plots``), all
written as one set (``build``). Stdlib and matplotlib only: never torch or Detectron2.
"""
