"""The command `sdft seal`: SEAL's ReST-EM rounds on a knowledge source's passages and the paper's evaluation table
on held-out passages (METHOD.md 3.3; the pieces are sdft/methods/seal.py).

The run folder holds one folder per seed (`seal.seeds`; each seed draws its own passage split, self-edits and fits):
  seed-<s>/table/<row>.jsonl        one record per held-out passage and table row (its accuracy, its self-edit)
  seed-<s>/rounds/round-<r>/self_edits.jsonl  one record per training passage: the k self-edits with their rewards
  seed-<s>/rounds/round-<r>/policy/ the policy after round r (merged weights, safetensors, and the tokenizer)
  seed-<s>/rounds.jsonl             one line per finished round
  seed-<s>/results.json             that seed's {"seal_table": {...}, "rounds": [...], ...}
  results.json                      the means over the seeds with 95% half-widths, and every seed's results
Every record is appended as soon as its passage is done, so a rerun on the same --output resumes at the passage it
stopped at (a round whose policy folder exists is not trained again)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sdft.claim import Claim, claim_continuing
from sdft.config import Config
from sdft.console import progress_bar
from sdft.errors import UserError
from sdft.eval_service import JUDGE_CACHE_DIR, model_world
from sdft.files import append_jsonl, atomic_write_json, read_jsonl_records
from sdft.judge import judge_problem, make_judge
from sdft.runs import write_run_header
from sdft.scoring import is_judged
from sdft.tasks.passages import Passage, load_passages, split_passages

if TYPE_CHECKING:
    from sdft.methods.seal import Answering

BASE_ROWS = ("no_update", "passage_only", "base_self_edits", "oracle")
"""The table rows measured on the policy before any round (the paper's baselines); seal_round_<r> after round r."""


@dataclass
class SeedRun:
    """One seed's share of the run: its config (`seed` set), its passage split and its folder."""

    cfg: Config
    train: list[Passage]
    held_out: list[Passage]
    run_dir: Path | None
    """seed-<s>/ in the run folder (None for a dry run)."""
    answering: Answering
    """How the questions are answered and graded (the run's one judge, when the passages need one)."""


@dataclass
class SealPlan:
    cfg: Config
    seeds: list[SeedRun]
    claim: Claim | None
    """The run folder (None for a dry run); rerunning on it continues at the passage it stopped at."""
    continual: Config | None = None
    """The continual experiment's sequence config (seal.continual, writer set), None without one."""

    @property
    def run_dir(self) -> Path:
        assert self.claim is not None
        return self.claim.run_dir


def plan_seal(cfg: Config, output: str | Path | None, dry_run: bool = False) -> SealPlan:
    """Everything checked that can be without the model (the config, every passage has questions, the split)."""
    from sdft.methods.seal import Answering

    seal, passages = cfg.seal, load_passages(cfg.seal)
    judged = sorted({p.scorer for p in passages if is_judged(p.scorer)})
    problem = judge_problem(cfg.eval.judge) if judged else None
    if problem:
        raise UserError(f"seal: the passages are graded by an LLM judge ({', '.join(judged)}), but {problem}")
    claim = None if dry_run else claim_continuing(output, "seal", cfg)
    judge = make_judge(cfg.eval.judge, Path(cfg.output_root) / JUDGE_CACHE_DIR) if judged and not dry_run else None
    answering = Answering(cfg.eval.max_new_tokens, cfg.eval.batch_size, judge)
    runs = []
    for seed in seal.seeds:
        train, held_out = split_passages(passages, seal.train_passages, seal.held_out_passages, seed)
        folder = claim.run_dir / f"seed-{seed}" if claim else None
        runs.append(SeedRun(dataclasses.replace(cfg, seed=seed), train, held_out, folder, answering))
    return SealPlan(cfg, runs, claim, _continual_config(cfg, runs[0]))


def _continual_config(cfg: Config, first: SeedRun) -> Config | None:
    """seal.continual loaded on this config's model, its SEAL chain written by the first seed's last policy; refused
    when a stream article was one of that seed's training passages (the writer would have trained on it)."""
    from sdft.config import load_config
    from sdft.tasks.registry import load_tasks, task_registry

    if cfg.seal.continual is None:
        return None
    if not Path(cfg.seal.continual).is_file():
        raise UserError(f"seal.continual: no sequence config at {cfg.seal.continual} (a path from the working "
                        "directory, e.g. configs/knowledge_stream.yaml; null for no continual run)")
    writer = _policy_dir(first, cfg.seal.rounds) if cfg.seal.rounds and first.run_dir else None
    stream = load_config(cfg.seal.continual, [f"model.name_or_path={cfg.model.name_or_path}",
                                              f"seal.writer={writer if writer else 'null'}"])
    trained = {p.title for p in first.train}
    for task in load_tasks(stream.tasks, task_registry(stream.custom_tasks, stream.task_sources)):
        seen = trained.intersection(task.extra.get("articles", {}))
        if seen:
            raise UserError(f"seal.continual: {cfg.seal.continual}'s task {task.name} is about {min(seen)!r}, a "
                            f"training passage of seed {first.cfg.seed}, whose policy writes the stream's self-edits; "
                            "stream articles that seed held out")
    return stream


def run_seal(plan: SealPlan) -> dict:
    """Every seed in turn (a finished seed's results.json is reused), then the means over the seeds."""
    from sdft.models import load_model, resolve_device
    from sdft.runs import read_json

    cfg, started = plan.cfg, time.perf_counter()
    write_run_header(plan.run_dir, cfg, "seal", str(resolve_device(cfg.model.device)), resumed=plan.claim.resuming)
    per_seed = {}
    for run in plan.seeds:
        done = run.run_dir / "results.json"
        per_seed[run.cfg.seed] = read_json(done) if done.is_file() else _run_seed(load_model(cfg.model), run)
    results = {"world": _world(cfg), "model": cfg.model.name_or_path,
               "template": cfg.seal.template, "k": cfg.seal.k, "seeds": list(cfg.seal.seeds),
               "metric": "strict accuracy on the held-out passages' questions, asked without the passage; means over "
                         "the seeds, 95% half-widths beside (Student t)",
               **seed_means(list(per_seed.values()))}
    if plan.continual is not None:
        results["continual"] = _run_continual(plan)
    results.update(elapsed_seconds=time.perf_counter() - started,
                   per_seed={str(seed): r for seed, r in per_seed.items()})
    atomic_write_json(plan.run_dir / "results.json", results)
    return results


def _run_continual(plan: SealPlan) -> dict:
    """The continual sequence in continual/ (a rerun resumes it as any sequence): each method's metrics, with their
    95% half-widths, and where the report is."""
    from sdft.sequence import plan_sequence, run_sequence

    folder = plan.run_dir / "continual"
    sequence = run_sequence(plan_sequence(plan.continual, folder))
    return {"config": plan.cfg.seal.continual, "writer": plan.continual.seal.writer, "tasks": sequence["tasks"],
            "report": str(folder / "report.md"),
            "methods": {m: {"metrics": v["metrics"], "metrics_ci95": v["metrics_ci95"]}
                        for m, v in sequence["methods"].items()}}


def seed_means(per_seed: list[dict]) -> dict:
    """seal_table and rounds as means over the seeds' results, each with its 95% half-width (None for one seed)."""
    from sdft.metrics import mean_ci95_of_present as mean_and_ci

    table = {row: mean_and_ci([r["seal_table"][row] for r in per_seed]) for row in per_seed[0]["seal_table"]}
    rounds = []
    for i, first in enumerate(per_seed[0]["rounds"]):
        entry = {"round": first["round"]}
        for key, value in first.items():
            if key != "round" and isinstance(value, (int, float)):
                entry[key], entry[f"{key}_ci95"] = mean_and_ci([r["rounds"][i][key] for r in per_seed])
        rounds.append(entry)
    return {"seal_table": {row: m for row, (m, _) in table.items()},
            "seal_table_ci95": {row: h for row, (_, h) in table.items()}, "rounds": rounds}


def _run_seed(loaded, plan: SeedRun) -> dict:
    cfg = plan.cfg
    finished = {r["round"]: r for r in read_jsonl_records(plan.run_dir / "rounds.jsonl")}
    table: dict[str, float] = {}
    with progress_bar() as bar:
        bar_task = bar.add_task(f"seed {cfg.seed}: seal rounds", total=cfg.seal.rounds)
        with _inner_adapter(loaded, cfg):
            table.update({row: _table_row(loaded, plan, row, 0, bar) for row in BASE_ROWS})
        for r in range(1, cfg.seal.rounds + 1):
            if not _policy_dir(plan, r).is_dir():
                with _inner_adapter(loaded, cfg):
                    _round(loaded, plan, r, bar)
                _train_policy(loaded, plan, r)
            else:
                from sdft.models import load_model

                loaded = load_model(dataclasses.replace(cfg.model, name_or_path=str(_policy_dir(plan, r))))
            with _inner_adapter(loaded, cfg):
                table[f"seal_round_{r}"] = _table_row(loaded, plan, "seal", r, bar)
            if r not in finished:
                finished[r] = _round_summary(plan, r)
                append_jsonl(plan.run_dir / "rounds.jsonl", [finished[r]])
            bar.advance(bar_task)
    results = {
        "world": _world(cfg), "seed": cfg.seed,
        "seal_table": _in_table_order(table), "rounds": [finished[r] for r in sorted(finished)],
        "train_passages": [p.title for p in plan.train], "held_out_passages": [p.title for p in plan.held_out],
    }
    atomic_write_json(plan.run_dir / "results.json", results)
    return results


def _world(cfg: Config) -> str:
    """Which world the numbers come from: the embedded one (its passages and the shipped model or one trained from
    it), the paper's (the SEAL release's files) or a mix (embedded passages, another model)."""
    if cfg.seal.source == "local":
        return "paper"
    return "embedded" if model_world(cfg.model.name_or_path) == "embedded" else "custom"


def _in_table_order(table: dict[str, float]) -> dict[str, float]:
    """The paper's order: no update, passage only, base self-edits, each SEAL round, the passage in the prompt."""
    rounds = sorted((k for k in table if k.startswith("seal_round_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return {k: table[k] for k in ("no_update", "passage_only", "base_self_edits", *rounds, "oracle")}


@contextmanager
def _inner_adapter(loaded, cfg: Config) -> Iterator[None]:
    """The policy wrapped in the inner adapter for the block, then unwrapped (the adapter reset, nothing merged)."""
    from sdft.adapters import reset_adapters, wrap_with_lora

    loaded.model = wrap_with_lora(loaded.model, cfg.seal.inner_lora, cfg.seed)
    try:
        yield
    finally:
        reset_adapters(loaded.model)
        loaded.model = loaded.model.base_model.unload()


def _policy_dir(plan: SeedRun, r: int) -> Path:
    return plan.run_dir / "rounds" / f"round-{r}" / "policy"


def _edits_path(plan: SeedRun, r: int) -> Path:
    return plan.run_dir / "rounds" / f"round-{r}" / "self_edits.jsonl"


def _seed(cfg: Config, *parts) -> int:
    from sdft.methods.seal import draw_seed

    return draw_seed(cfg.seed, *parts)


def _round(loaded, plan: SeedRun, r: int, bar) -> None:
    """Round r's inner loop: for every training passage not yet recorded, k self-edits, each scored."""
    from sdft.methods.seal import (
        answer_accuracy,
        best_self_edit,
        sample_self_edits,
        score_self_edit,
    )

    cfg, seal, path = plan.cfg, plan.cfg.seal, _edits_path(plan, r)
    done = {record["title"] for record in read_jsonl_records(path)}
    task = bar.add_task(f"round {r}: self-edits", total=len(plan.train), completed=len(done))
    for passage in plan.train:
        if passage.title in done:
            continue
        started = time.perf_counter()
        baseline = answer_accuracy(loaded, passage, plan.answering)
        generations = sample_self_edits(loaded, passage, seal, seal.k, _seed(cfg, "round", r, passage.title))
        scored = [score_self_edit(loaded, passage, g, baseline, seal, _seed(cfg, "fit", passage.title),
                                  plan.answering) for g in generations]
        append_jsonl(path, [{"title": passage.title, "baseline": baseline, "self_edits": [s.record() for s in scored],
                             "best": best_self_edit([s.reward for s in scored]),
                             "seconds": time.perf_counter() - started}])
        bar.advance(task)


def _train_policy(loaded, plan: SeedRun, r: int) -> None:
    """ReST-EM's SFT on round r's kept self-edits, merged and saved as round r's policy; no kept self-edit leaves the
    policy as it was (saved all the same, so that the round counts as done)."""
    from sdft.adapters import merge_and_save
    from sdft.methods.harness import save_model
    from sdft.methods.seal import outer_sft, self_edit_prompt

    by_title = {p.title: p for p in plan.train}
    pairs = [(self_edit_prompt(by_title[rec["title"]], plan.cfg.seal.template), rec["self_edits"][rec["best"]]["text"])
             for rec in read_jsonl_records(_edits_path(plan, r)) if rec["best"] is not None]
    sft_path = _policy_dir(plan, r).parent / "sft.json"  # written before the policy, which marks the round trained
    if pairs:
        wrapped, fit = outer_sft(loaded, pairs, plan.cfg.seal, _seed(plan.cfg, "outer", r))
        atomic_write_json(sft_path, {"examples": len(pairs), "steps": fit.steps, "loss_before": fit.loss_before,
                                     "loss_after": fit.loss_after, "seconds": fit.seconds})
        loaded.model = merge_and_save(wrapped, loaded.tokenizer, _policy_dir(plan, r))
    else:
        atomic_write_json(sft_path, {"examples": 0})
        save_model(loaded.model, loaded.tokenizer, _policy_dir(plan, r))


def _round_summary(plan: SeedRun, r: int) -> dict:
    """rounds.jsonl's line for round r, from its records (so a resumed round sums every session's seconds)."""
    from sdft.runs import read_json

    records = read_jsonl_records(_edits_path(plan, r))
    edits = [e for rec in records for e in rec["self_edits"]]
    sft = read_json(_policy_dir(plan, r).parent / "sft.json")
    return {"round": r, "mean_reward": _mean([e["reward"] for e in edits]),
            "positive_share": _mean([rec["best"] is not None for rec in records]),
            "mean_self_edit_tokens": _mean([e["tokens"] for e in edits]),
            "mean_self_edit_chars": _mean([len(e["text"]) for e in edits]),
            "mean_self_edit_lines": _mean([e["lines"] for e in edits]),
            "empty_self_edits": sum(e["empty"] for e in edits), "capped_self_edits": sum(e["hit_cap"] for e in edits),
            "no_update_accuracy": _mean([rec["baseline"] for rec in records]), "passages": len(records),
            "self_edits": len(edits), "sft": sft,
            "seconds": sum(rec["seconds"] for rec in records) + sft.get("seconds", 0.0)}


def _table_row(loaded, plan: SeedRun, row: str, r: int, bar) -> float:
    """One row of the evaluation table: mean strict accuracy over the held-out passages, one update per passage.
    `seal` rows use the current policy's self-edits (round r), base_self_edits the policy before any round."""
    from sdft.methods.seal import (
        answer_accuracy,
        sample_self_edits,
        score_self_edit,
        updated_accuracy,
    )

    cfg, seal = plan.cfg, plan.cfg.seal
    name = row if row != "seal" else f"seal_round_{r}"
    path = plan.run_dir / "table" / f"{name}.jsonl"
    records = {rec["title"]: rec for rec in read_jsonl_records(path)}
    task = bar.add_task(f"table: {name}", total=len(plan.held_out), completed=len(records))
    answering = plan.answering
    for passage in plan.held_out:
        if passage.title in records:
            continue
        fit_seed, record = _seed(cfg, "fit", passage.title), {"title": passage.title}
        if row in ("no_update", "oracle"):
            record["accuracy"] = answer_accuracy(loaded, passage, answering, oracle=row == "oracle")
        elif row == "passage_only":
            record["accuracy"] = updated_accuracy(loaded, passage, [], seal, fit_seed, answering)
        else:
            baseline = answer_accuracy(loaded, passage, answering)
            [generation] = sample_self_edits(loaded, passage, seal, 1, _seed(cfg, "table", r, passage.title))
            scored = score_self_edit(loaded, passage, generation, baseline, seal, fit_seed, answering)
            record.update(accuracy=scored.accuracy, self_edit=scored.record(), no_update=baseline)
        append_jsonl(path, [record])
        records[passage.title] = record
        bar.advance(task)
    return _mean([records[p.title]["accuracy"] for p in plan.held_out])


def _mean(values) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def seal_lines(results: dict) -> str:
    """The command's summary: the table and the rounds' rewards, means over the seeds with 95% half-widths."""
    def cell(value, half):
        return f"{value:.3f}" + (f" ± {half:.3f}" if half is not None else "")

    seeds = ", ".join(map(str, results["seeds"]))
    lines = [f"{results['world']} world, {results['model']}; strict accuracy, means over seeds {seeds}:"]
    lines += [f"  {row:16} {cell(v, results['seal_table_ci95'][row])}" for row, v in results["seal_table"].items()]
    lines += [f"  round {r['round']}: mean reward {cell(r['mean_reward'], r['mean_reward_ci95'])}, positive share "
              f"{r['positive_share']:.2f}" for r in results["rounds"]]
    if "continual" in results:
        continual = results["continual"]
        lines.append(f"continual, {len(continual['tasks'])} articles one after another ({continual['report']}):")
        for method, summary in continual["methods"].items():
            m, h = summary["metrics"], summary["metrics_ci95"]
            lines.append(f"  {method:6} ACC {cell(m['acc'], h['acc'])}, BWT {cell(m['bwt'], h['bwt'])}, general delta "
                         f"{cell(m['general_delta'], h['general_delta'])}")
    return "\n".join(lines)


def dry_run_lines(plan: SealPlan) -> list[str]:
    """What `sdft seal --dry-run` prints: the checked passages and the plan, from the config alone (no model)."""
    seal, first = plan.cfg.seal, plan.seeds[0]
    questions = sum(len(p.questions) for p in first.train + first.held_out)
    return [(f"source {seal.source} (world {seal.source}), model {plan.cfg.model.name_or_path}, questions from split "
            f"'{seal.question_split}'"),
            (f"passages: {len(first.train)} to train on, {len(first.held_out)} held out, {questions} questions in all; split "
             f"anew for each of the seeds {', '.join(map(str, seal.seeds))}"),
            (f"per round: {seal.k} self-edits per passage ({seal.template}, temperature {seal.sampling.temperature:g}, "
            f"top-p {seal.sampling.top_p:g}), each fitted {seal.eval_times} times (LoRA r {seal.inner_lora.r}, "
            f"{seal.inner_epochs} epochs, lr {seal.inner_learning_rate:g}, batch {seal.inner_batch_size})"),
            (f"rounds: {seal.rounds}; SFT on the kept self-edits with LoRA r {seal.outer_lora.r}, "
            f"{seal.outer_epochs} epochs, lr {seal.outer_learning_rate:g}, merged after each round"),
            f"table rows: {', '.join([*BASE_ROWS, *(f'seal_round_{r}' for r in range(1, seal.rounds + 1))])}",
            *([(f"then continual: {seal.continual} ({', '.join(plan.continual.sequence.methods)} over "
                f"{', '.join(plan.continual.tasks)}), SEAL's self-edits written by seed {first.cfg.seed}'s last "
                "policy")] if plan.continual else [])]
