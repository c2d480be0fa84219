"""Scores a person would agree with: every animator cell beside the baselines on the held-out sequence, cross-identity
drivers of known expression, transfer to real drivers, and the tables, plots and reports of all of them.

Modules: :mod:`.candidates` (what is scored), :mod:`.evaluate` (the held-out scores and the choice of a cell),
:mod:`.images` (the full chain's frames against the captured ones), :mod:`.cross_identity`,
:mod:`.expression_measures` and :mod:`.transfer_score` (an avatar video against its driver, FaceMesh on both),
:mod:`.transfer_grid` (every cell on real drivers), :mod:`.tables`, :mod:`.plots` and :mod:`.report` (what
``compare`` and ``evaluate`` write), :mod:`.run` (those two commands' work).
"""
