"""The paper's knowledge-injection table (METHOD.md: strict / lenient / out-of-distribution per method, with the
general suite's change) from the rows of a sequence whose chain learns `knowledge`.

Per method and seed: the row right after the knowledge stage gives strict (`knowledge` accuracy), lenient (its
`lenient_accuracy`) and ood (`knowledge_ood` accuracy); general_delta is that row's general mean minus the row
before the stage. `base` is row 0; `oracle` is row 0 on `knowledge_oracle` / `knowledge_oracle_ood` (the article in
the prompt, no training). Cells a run did not evaluate are None. Means over seeds with 95% half-widths (`*_ci95`).
"""

from __future__ import annotations

from sdft.metrics import mean_ci95

KEYS = ("strict", "lenient", "ood", "general_delta")
TASK = "knowledge"


def knowledge_table(tasks: list[str], chains: dict[str, dict[int, list[dict]]]) -> dict | None:
    """{"base": K, "oracle": K, <method>: K, ...} with K = {strict, lenient, ood, general_delta, <key>_ci95};
    None when the chain does not learn `knowledge`."""
    if TASK not in tasks:
        return None
    stage = tasks.index(TASK) + 1  # row index after the knowledge stage
    base_row = next(iter(next(iter(chains.values())).values()))[0]
    table = {"base": _over_seeds([_cells(base_row, TASK, base_row)]),
             "oracle": _over_seeds([_cells(base_row, f"{TASK}_oracle", base_row)])}
    for method, seeds in chains.items():
        cells = [_cells(rows[stage], TASK, rows[stage - 1]) for rows in seeds.values()]
        table[method] = _over_seeds(cells)
    return table


def _cells(row: dict, task: str, before: dict) -> dict:
    scores = row["scores"]
    plain, ood = scores.get(task, {}), scores.get(f"{task}_ood", {})
    return {"strict": plain.get("accuracy"), "lenient": plain.get("lenient_accuracy"), "ood": ood.get("accuracy"),
            "general_delta": _delta(row["general"].get("mean"), before["general"].get("mean"))}


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def _over_seeds(cells: list[dict]) -> dict:
    out: dict = {}
    for key in KEYS:
        values = [c[key] for c in cells if c[key] is not None]
        mean, half = mean_ci95(values) if values else (None, None)
        out[key], out[f"{key}_ci95"] = mean, half
    return out
