"""report.md, plots and rich tables from a results dict written by hand; the report package's import graph."""

import ast
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from sdft.metrics import DEFINITIONS, all_metrics, forgetting_per_task, mean_ci95
from sdft.report import comparison_table, fmt, fmt_delta, matrix_table, write_sequence_report
from sdft.report.sequence_rows import forgetting_bars, normalised_curve

TASKS = ["science", "tools", "medical"]
# Per-seed accuracy matrices (rows: base, after science, after tools, after medical) and general scores.
SDFT = {
    "0": ([[0.10, 0.20, 0.30], [0.80, 0.25, 0.30], [0.76, 0.90, 0.35], [0.72, 0.86, 0.70]], [0.90, 0.89, 0.88, 0.88]),
    "1": ([[0.10, 0.20, 0.30], [0.78, 0.25, 0.30], [0.74, 0.88, 0.35], [0.70, 0.84, 0.66]], [0.90, 0.87, 0.86, 0.86]),
}
SFT = {
    "0": ([[0.10, 0.20, 0.30], [0.90, 0.22, 0.30], [0.40, 0.95, 0.30], [0.30, 0.50, 0.80]], [0.90, 0.70, 0.60, 0.50]),
    "1": ([[0.10, 0.20, 0.30], [0.90, 0.22, 0.30], [0.40, 0.95, 0.30], [0.40, 0.60, 0.80]], [0.90, 0.70, 0.60, 0.50]),
}
# By hand, with two seeds the 95% half-width is t(1) * |a - b| / 2 = 6.353 * |a - b|:
# sdft R[1][science] = mean(0.80, 0.78) = 0.790 ± 6.353 * 0.02 = 0.127
# sdft ACC = mean(0.76, 0.7333) = 0.7467 ± 6.353 * 0.02667 = 0.169
# sdft final general = mean(0.88, 0.86) = 0.870 ± 0.127; general delta = mean(-0.02, -0.04) = -0.030 ± 0.127
# sft R[3][science] = mean(0.30, 0.40) = 0.350 ± 0.635
# sft forgetting: F_science = mean(0.90 - 0.30, 0.90 - 0.40) = 0.550 ± 0.635, F_tools = mean(0.45, 0.35) = 0.400


def _aggregate(per_seed: dict) -> dict:
    """What the sequence runner stores for one method: means and half-widths over seeds."""
    matrices = [m for m, _ in per_seed.values()]
    generals = [g for _, g in per_seed.values()]
    metrics = {seed: all_metrics(m, g) for seed, (m, g) in per_seed.items()}
    cells = [[mean_ci95([m[i][j] for m in matrices]) for j in range(3)] for i in range(4)]
    general = [mean_ci95([g[i] for g in generals]) for i in range(4)]
    summary = {key: mean_ci95([metrics[s][key] for s in per_seed]) for key in DEFINITIONS}
    return {
        "matrix": [[v for v, _ in row] for row in cells],
        "matrix_ci95": [[c for _, c in row] for row in cells],
        "general": [v for v, _ in general],
        "general_ci95": [c for _, c in general],
        "metrics": {key: v for key, (v, _) in summary.items()},
        "metrics_ci95": {key: c for key, (_, c) in summary.items()},
        "forgetting_per_task": [sum(col) / len(col) for col in zip(*map(forgetting_per_task, matrices))],
        "per_seed": {s: {"matrix": m, "general": g, "metrics": metrics[s]} for s, (m, g) in per_seed.items()},
    }


@pytest.fixture
def results() -> dict:
    sft = _aggregate(SFT)
    sft["metrics"]["fwt"] = sft["metrics_ci95"]["fwt"] = None  # a metric the runner could not compute
    return {
        "world": "embedded",
        "tasks": TASKS,
        "seeds": [0, 1],
        "general_suite": ["arithmetic", "reverse", "sorting", "minimum"],
        "methods": {"sdft": _aggregate(SDFT), "sft": sft},
        "definitions": DEFINITIONS,
        "elapsed_seconds": 812.3,
    }


def _render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_fmt():
    assert fmt(0.5123, 0.0311) == "0.512 ± 0.031"
    assert fmt(0.5123) == "0.512"
    assert fmt(None, 0.1) == "-"
    assert (fmt_delta(0.12), fmt_delta(-0.05), fmt_delta(0.0), fmt_delta(None)) == ("+0.120", "-0.050", "+0.000", "-")


def test_normalised_curve_by_hand():
    assert normalised_curve([0.2, 0.4, 0.7], base=0.2, best=0.7) == pytest.approx([0.0, 0.4, 1.0])
    assert normalised_curve([0.1, None], base=0.2, best=0.7)[0] == pytest.approx(-0.2)
    assert normalised_curve([0.1, None], base=0.2, best=0.7)[1] is None
    assert normalised_curve([0.05, None], base=0.0, best=0.5) == [pytest.approx(0.1), None]  # half-widths
    assert normalised_curve([0.3, 0.3], base=0.3, best=0.3) == [0.3, 0.3]  # best == base: raw values


def test_comparison_table_one_row_per_method(results):
    table = comparison_table(results)
    assert table.row_count == 2
    text = _render(table)
    assert "embedded" in text and "2 seeds" in text
    for expected in ("0.747 ± 0.169", "0.870 ± 0.127", "-0.030 ± 0.127", "0.567 ± 0.424"):
        assert expected in text
    sft_line = next(line for line in text.splitlines() if "sft" in line and "sdft" not in line)
    assert " - " in sft_line  # FWT is None for sft


def test_matrix_table_rows_and_general_column(results):
    text = _render(matrix_table(results, "sft"))
    for label in ("base", "after science", "after tools", "after medical", "general"):
        assert label in text
    assert "0.350 ± 0.635" in text


def test_forgetting_bars_from_per_seed_matrices(results):
    values, cis = forgetting_bars(results, "sft")
    assert values == pytest.approx([0.55, 0.40])
    assert cis == pytest.approx([0.6353, 0.6353])


def test_write_sequence_report(results, tmp_path):
    paths = write_sequence_report(results, tmp_path / "run")
    names = {p.name for p in paths}
    assert names == {"report.md", "accuracy_over_stages.png", "matrix_sdft.png", "matrix_sft.png", "forgetting.png"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Numbers from the embedded toy world: a tiny model on CPU, not real models" in report
    assert "science, tools, medical" in report and "Seeds: 0, 1" in report
    for expected in ("### sdft", "### sft", "0.790 ± 0.127", "0.350 ± 0.635", "0.550 ± 0.635", "0.747 ± 0.169"):
        assert expected in report
    for text in DEFINITIONS.values():
        assert text.partition(": ")[0] in report
    assert "T-1 = 2 tasks" in report and "[0, 1]" in report
    for name in names - {"report.md"}:
        assert f"]({name})" in report
        data = (tmp_path / "run" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert "Elapsed: 812 s" in report
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp files left


def test_one_seed_one_task_paper_world_with_missing_values(tmp_path):
    matrix, general = [[None], [0.3]], [None, 0.5]  # a cell and a general score the runner could not measure
    results = {"world": "paper", "tasks": ["science"], "task_versions": {"science": "2"}, "seeds": [0],
               "definitions": DEFINITIONS,
               "methods": {"sft": {"matrix": matrix, "matrix_ci95": None, "general": general,
                                   "general_ci95": [None, None], "metrics": all_metrics(matrix, general),
                                   "metrics_ci95": dict.fromkeys(DEFINITIONS)}}}
    paths = write_sequence_report(results, tmp_path)
    assert {p.name for p in paths} == {"report.md", "accuracy_over_stages.png", "matrix_sft.png"}
    report = (tmp_path / "report.md").read_text()
    assert "paper world" in report and "science (v2)" in report
    assert "±" not in report.split("### What")[0]
    assert "| sft | 0.300 | - | - | - | - | 0.500 |" in report
    assert "| base | - | - |" in report


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_plots_get_the_mode_of_a_plain_open(results, tmp_path, umask):
    old = os.umask(umask)
    try:
        paths = write_sequence_report(results, tmp_path)
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert set(modes.values()) == {stat.S_IMODE((tmp_path / "plain").stat().st_mode)} == {0o666 & ~umask}
    assert "forgetting.png" in modes


REPORT_PACKAGE = Path(__file__).resolve().parents[1] / "sdft" / "report"


def _imports_within_the_package(module: Path) -> set[str]:
    """The sdft.report modules this file imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:  # from .x import y / from . import x
            found |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sdft.report."):
            found.add(node.module.removeprefix("sdft.report."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("sdft.report.") for a in node.names if a.name.startswith("sdft.report.")}
    return found


def test_the_report_package_has_no_import_cycle():
    graph = {p.stem: _imports_within_the_package(p) for p in REPORT_PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert "plots" in graph["sequence"] and not graph["plots"] & {"sequence", "prior", "tables"}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        if name not in done:
            for child in graph[name]:
                visit(child, path + (name,))
            done.add(name)

    for name in graph:
        visit(name, ())
    # and in a fresh interpreter: the plots module first, then the package that uses it; matplotlib stays unloaded
    code = "import sys, sdft.report.plots, sdft.report; assert 'matplotlib' not in sys.modules"
    path = os.pathsep.join(filter(None, [str(REPORT_PACKAGE.parents[1]), os.environ.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": path})


def test_the_accuracy_plot_has_a_general_suite_panel_in_raw_accuracy(results):
    from sdft.report.plots import _accuracy_figure, _pyplot

    plt = _pyplot()
    fig = _accuracy_figure(plt, results)
    try:
        *task_axes, general_axes = fig.axes
        assert len(task_axes) == len(TASKS) and general_axes.get_title().startswith("general suite")
        plotted = {bars.get_label(): list(bars.lines[0].get_ydata()) for bars in general_axes.containers}
        assert plotted == {name: pytest.approx(m["general"]) for name, m in results["methods"].items()}
    finally:
        plt.close(fig)
