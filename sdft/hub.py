"""Whether a command may reach the Hugging Face hub: decided once, before any hub library is imported.

No hidden network access: a command whose config names nothing on the hub (a model id, a hub task source, a custom
task's hub split, a local judge model id, lm-evaluation-harness benchmarks) runs with HF_HUB_OFFLINE=1, so the
libraries read only local files and the cache. A command that names something on the hub first asks the hub for an
answer within PROBE_TIMEOUT_S; when none comes it too runs offline, from the cache, so a hub id that is not cached
fails in one line within seconds instead of minutes of retry messages. An HF_HUB_OFFLINE the user set is kept.

The hub libraries read HF_HUB_OFFLINE when they are imported; the CLI calls `choose_network` before importing
them (sdft.config imports none).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from sdft.config import EMBEDDED_MODEL, Config

PROBE_TIMEOUT_S = 4.0
OFFLINE_ENV = "HF_HUB_OFFLINE"
_state: dict[str, str | None] = {"offline_because": None}


def choose_network(cfg: Config, extra_models: tuple[str, ...] = ()) -> None:
    """Set HF_HUB_OFFLINE=1 unless the config names something on the hub that answers. `extra_models`: models the
    command will load besides cfg.model (the base model of `eval --prior-tasks`)."""
    if OFFLINE_ENV in os.environ or os.environ.get("TRANSFORMERS_OFFLINE"):
        return
    named = hub_names(cfg, extra_models)
    if not named:
        _go_offline("the config names nothing on the hub, so sdft reads local files only")
        return
    failure = _unreachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    if failure:
        _go_offline(f"the hub cannot be reached ({failure})")


def offline_because() -> str | None:
    """Why this process runs offline when sdft decided it (None when it is online or the user decided)."""
    return _state["offline_because"]


def go_offline(reason: str) -> None:
    """Run this process offline (`reason` is what errors say about it)."""
    if OFFLINE_ENV not in os.environ:
        _go_offline(reason)


def _go_offline(reason: str) -> None:
    os.environ[OFFLINE_ENV] = "1"
    _state["offline_because"] = reason


def hub_names(cfg: Config, extra_models: tuple[str, ...] = ()) -> list[str]:
    """What the config would fetch from the hub."""
    from sdft.tasks.custom import read_custom_task_file

    models = [cfg.model.name_or_path, *extra_models]
    if cfg.eval.judge.backend == "local" and cfg.eval.judge.model:
        models.append(cfg.eval.judge.model)
    named = [m for m in models if looks_like_hub_id(m)]
    named += [f"task_sources.{task}" for task, src in cfg.task_sources.items() if src.source == "hub"]
    for path in cfg.custom_tasks:
        splits = read_custom_task_file(path).splits.values()
        named += [s["hub"] for s in splits if isinstance(s, dict) and s.get("hub")]
    if cfg.eval.harness.tasks:
        named.append("eval.harness.tasks")
    return named


def looks_like_hub_id(name: str) -> bool:
    """'org/model' or 'model' that is not a local path: what from_pretrained would look up on the hub."""
    return name != EMBEDDED_MODEL and not Path(name).expanduser().exists() and not looks_like_path(name)


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith((".yaml", ".json"))


def _unreachable(endpoint: str) -> str | None:
    """None when the endpoint answers at all (any HTTP status); else why not, in a few words."""
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S):  # honours HTTPS_PROXY like the libraries
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"{endpoint}: {reason}"
