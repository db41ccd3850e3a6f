"""The `sdft` command line: thin commands that parse, load the config, make one call and print."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.markup import escape

from sdft.config import Config, load_config
from sdft.console import console, err_console
from sdft.errors import UserError
from sdft.files import refused_oserror

# Our own progress bars say what is happening; the libraries' per-file bars only add noise.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# No hidden network access: the hub libraries would otherwise send usage telemetry.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

app = typer.Typer(
    help="Continual fine-tuning experiments: SDFT against SFT and friends, with forgetting measured.\n\n"
    "With no config every command runs on the embedded world: a tiny model shipped with sdft, on a CPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config with overrides of the defaults.")]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override one config key, e.g. --set train.learning_rate=1e-5 (repeatable)."),
]
OutputOption = Annotated[Optional[Path], typer.Option("--output", "-o", help="Run folder to write (default: runs/<timestamp>-<command>).")]
TasksOption = Annotated[Optional[str], typer.Option("--tasks", "-t", help="Comma-separated task names (default: the config's tasks).")]
ProcessesOption = Annotated[int, typer.Option("--processes", min=1, help="With --dry-run: the launch's process count (GPUs), for the batch split and the memory per process (train.sharding).")]
LimitOption = Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N rows of each task.")]
ModelArgument = Annotated[
    Optional[str], typer.Argument(help="A hub id, a local model folder, a run folder, or 'embedded' (default: the config's model).")
]


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False) -> None:
    _state["debug"] = debug


def user_errors(command: Callable) -> Callable:
    """A UserError becomes one red line on stderr and exit code 1 (the traceback only with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (UserError, OSError) as err:
            # a write the system refused inside a library's own writer (a saved model, the Trainer's checkpoint)
            refused = refused_oserror(err) if isinstance(err, OSError) else err
            if _state["debug"] or refused is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(refused))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def _config(path: Path | None, overrides: list[str] | None, offline: bool = False, **cli_overrides) -> Config:
    """The config file, then --set overrides, then the command's own options (which win). Then whether the command
    may use the network (sdft/hub.py), before any hub library is imported: the libraries read that choice once, at
    import, so every command imports its modules after calling this."""
    from sdft.hub import choose_network, go_offline
    from sdft.runs import lineage_of

    extra = [f"{key}={value}" for key, value in cli_overrides.items() if value is not None]
    cfg = load_config(path, [*(overrides or []), *extra])
    if offline:
        go_offline("a dry run reads local files only")
    else:
        lineage = lineage_of(cfg.model.name_or_path)  # a run folder's model needs its base model
        choose_network(cfg, (lineage["base_model"],) if lineage else ())
    return cfg


def _split(names: str | None) -> list[str] | None:
    return [n.strip() for n in names.split(",") if n.strip()] if names else None


@app.command()
@user_errors
def train(
    config: Annotated[Path, typer.Argument(help="YAML config of the stage (e.g. configs/sdft.yaml).")],
    set_: SetOption = None,
    output: OutputOption = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output from its last checkpoint.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check what can be checked offline and print the plan (steps, tokens, memory); train nothing.")] = False,
    processes: ProcessesOption = 1,
) -> None:
    """Learn one task from demonstrations with the config's method (sdft, sft, dft, cpt), evaluating before and after."""
    cfg = _config(config, set_, offline=dry_run)
    from sdft.report import train_table
    from sdft.train_run import run_train

    if dry_run:
        from sdft.dry_run import dry_run_train, print_dry_run

        print_dry_run(dry_run_train(cfg, processes), console)
        return
    results, run_dir = run_train(cfg, output, resume=resume)
    if results["after"] is not None:
        console.print(train_table(results))
    console.print(f"run folder: {run_dir}")


@app.command("eval")
@user_errors
def eval_(
    model: ModelArgument = None,
    tasks: TasksOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    output: OutputOption = None,
    teacher: Annotated[bool, typer.Option(help="Use the SDFT teacher prompt (question + demonstration) instead of the plain question.")] = False,
    limit: LimitOption = None,
    prior_tasks: Annotated[bool, typer.Option(help="Evaluate a run on every task of its lineage and the general suite, next to its base model.")] = False,
) -> None:
    """Evaluate a model on tasks (greedy by default, batched) and on the general-capability suite."""
    cfg = _config(config, set_, **{"model.name_or_path": model, "eval.limit": limit})
    from sdft.run_eval import plan_evaluation, run_eval
    from sdft.report import eval_table

    if prior_tasks:
        _eval_prior_tasks(cfg, output, _split(tasks))
        return
    plan = plan_evaluation(cfg, "eval", output, _split(tasks))
    results = run_eval(plan, teacher=teacher)
    console.print(eval_table(results))
    console.print(f"results: {plan.run_dir / 'results.json'}")


def _eval_prior_tasks(cfg: Config, output: Path | None, extra_tasks: list[str] | None) -> None:
    from sdft.prior import prior_task_names, run_prior_eval
    from sdft.run_eval import plan_evaluation
    from sdft.report import prior_table

    plan = plan_evaluation(cfg, "eval-prior", output, prior_task_names(cfg.model.name_or_path, extra_tasks))
    results = run_prior_eval(plan)
    console.print(prior_table(results))
    console.print(f"results: {plan.run_dir / 'results.json'}, report: {plan.run_dir / 'report.md'}")


@app.command()
@user_errors
def check(
    model: ModelArgument = None,
    tasks: TasksOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    output: OutputOption = None,
    limit: LimitOption = None,
) -> None:
    """In-context readiness: is the model with a demonstration in its prompt good enough to be its own teacher?"""
    cfg = _config(config, set_, **{"model.name_or_path": model, "eval.limit": limit})
    from sdft.run_eval import plan_evaluation, run_check
    from sdft.report import check_table

    plan = plan_evaluation(cfg, "check", output, _split(tasks))
    results = run_check(plan)
    console.print(check_table(results))
    colour = "green" if results["verdict"] == "ready" else "yellow"
    console.print(f"verdict: [bold {colour}]{results['verdict']}[/]")
    for reason in results["reasons"]:
        console.print(f"  {reason}")
    console.print(f"results: {plan.run_dir / 'results.json'}")


@app.command()
@user_errors
def sequence(
    tasks: Annotated[Optional[list[str]], typer.Argument(help="Tasks in training order (default: the config's tasks).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Run folder (default: runs/sequence-<tasks>); re-running on the same folder resumes.")] = None,
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated methods, each trained as its own chain (default: sequence.methods, sdft,sft).")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds; several give means and 95% intervals (default: sequence.seeds, 0).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check what can be checked offline and print every stage's plan; train nothing.")] = False,
    processes: ProcessesOption = 1,
) -> None:
    """Learn tasks one after another; evaluate every task after every stage; report forgetting."""
    listed = lambda text: f"[{text}]" if text else None  # noqa: E731
    cfg = _config(config, set_, offline=dry_run, **{"tasks": listed(",".join(tasks) if tasks else None),
                                                   "sequence.methods": listed(methods), "sequence.seeds": listed(seeds)})
    from sdft.report import comparison_table, matrix_table
    from sdft.sequence import plan_sequence, run_sequence

    if dry_run:
        from sdft.dry_run import dry_run_sequence, print_dry_run

        print_dry_run(dry_run_sequence(cfg, processes), console)
        return
    plan = plan_sequence(cfg, output)
    results = run_sequence(plan)
    if not results:  # a process other than the main one of a launched job: the main one reports
        return
    for method in results["methods"]:
        console.print(matrix_table(results, method))
    console.print(comparison_table(results))
    console.print(f"results: {plan.run_dir / 'results.json'}, report: {plan.run_dir / 'report.md'}")


@app.command()
@user_errors
def ttt(
    config: Annotated[Path, typer.Argument(help="YAML config with a ttt section (e.g. configs/ttt.yaml).")],
    set_: SetOption = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Run folder (default: runs/<timestamp>-ttt); re-running on the same folder resumes at the next instance.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the config and the few-shot data offline and print the plan; load no model.")] = False,
) -> None:
    """Zero-shot vs in-context vs test-time training (a throwaway adapter fitted on each instance's demos) on few-shot instances."""
    from sdft.report.ttt import ttt_table
    from sdft.ttt_run import dry_run_lines, plan_ttt, run_ttt

    cfg = _config(config, set_)
    plan = plan_ttt(cfg, output, dry_run=dry_run)
    if dry_run:
        for line in dry_run_lines(plan):
            console.print(line, highlight=False, soft_wrap=True)
        return
    results = run_ttt(plan)
    console.print(ttt_table(results))
    if not results["base_identical"]:
        err_console.print("[bold red]the base weights changed during test-time training[/]")
    console.print(f"results: {plan.run_dir / 'results.json'}, report: {plan.run_dir / 'report.md'}")


@app.command()
@user_errors
def collm(
    config: Annotated[Path, typer.Argument(help="YAML config with a collm section (e.g. configs/collm.yaml).")],
    set_: SetOption = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Run folder (default: runs/<timestamp>-collm); re-running on the same folder continues where it stopped.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the config, tasks and tokenizers offline and print the plan; load no weights.")] = False,
) -> None:
    """Co-LLM: a base model learns when to hand a token to an expert; base, expert and the pair on every task and the general suite."""
    cfg = _config(config, set_, offline=dry_run)
    from sdft.collm_run import dry_run_lines, plan_collm, run_collm
    from sdft.report.collm import collm_table

    plan = plan_collm(cfg, output, dry_run=dry_run)
    if dry_run:
        if cfg.collm.expert is None:  # the expert this run trains first: `sdft train`'s dry run
            from sdft.dry_run import dry_run_train, print_dry_run

            print_dry_run(dry_run_train(cfg), console)
        for line in dry_run_lines(plan):
            console.print(line, highlight=False, soft_wrap=True)
        return
    results = run_collm(plan)
    console.print(collm_table(results))
    console.print(f"results: {plan.run_dir / 'results.json'}, report: {plan.run_dir / 'report.md'}")


@app.command()
@user_errors
def seal(
    config: Annotated[Path, typer.Argument(help="YAML config with a seal section (e.g. configs/seal.yaml).")],
    set_: SetOption = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Run folder (default: runs/<timestamp>-seal); re-running on the same folder resumes at the passage it stopped at.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the config and the passages offline and print the plan; load no model.")] = False,
) -> None:
    """SEAL: the model writes self-edits for passages, learns to write better ones (ReST-EM rounds), and the
    held-out table compares no update / passage only / base self-edits / each round / the passage in the prompt."""
    from sdft.seal_run import dry_run_lines, plan_seal, run_seal, seal_lines

    cfg = _config(config, set_, offline=dry_run)
    plan = plan_seal(cfg, output, dry_run=dry_run)
    if dry_run:
        for line in dry_run_lines(plan):
            console.print(line, highlight=False, soft_wrap=True)
        return
    results = run_seal(plan)
    console.print(seal_lines(results), highlight=False)
    console.print(f"results: {plan.run_dir / 'results.json'}")


@app.command("tasks")
@user_errors
def tasks_(config: ConfigOption = None, set_: SetOption = None) -> None:
    """List the known tasks with their source, version, scorer and split sizes."""
    cfg = _config(config, set_)
    from sdft.report import tasks_table
    from sdft.tasks.registry import task_registry

    registry = task_registry(cfg.custom_tasks, cfg.task_sources)
    console.print(tasks_table([load() for load in registry.values()]))


if __name__ == "__main__":
    app()
