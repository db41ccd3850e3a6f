"""Reading YAML strictly, for every YAML sdft reads (configs, custom task files, `--set` values, a run folder's
config.yaml): safe (a python tag is refused), and a key written twice in one mapping is an error naming both lines,
because PyYAML would silently keep the last one and the user would train with a value they did not mean. Every
problem is one UserError line naming the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sdft.errors import UserError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping holding the same key twice."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' merges; it is not a key
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if _hashable(key) and key in first_line:
                    raise _DuplicateKey(key, first_line[key], line)
                if _hashable(key):
                    first_line[key] = line
        return super().construct_mapping(node, deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int):
        super().__init__(f"line {again}: key '{key}' is written twice in one mapping (first at line {first}); "
                         "keep one")
        self.line = again


def _hashable(key: Any) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


def load_yaml_text(text: str, source: str) -> Any:
    """The value of a YAML text; `source` (a file name, or "override 'a=b'") starts every error line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as err:
        raise UserError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{source}: not valid YAML{where}: {problem}") from None


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file. Missing, unreadable, binary, empty (or comments only) and
    not-a-mapping files are UserErrors; `what` names the file's role ("config file", "custom task file")."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} '{path}' not found")
    if not path.is_file():
        raise UserError(f"{what} '{path}' is a folder, not a YAML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a YAML text file (byte {err.start} is not UTF-8 text)") from None
    except OSError as err:
        raise UserError(f"{what} '{path}' cannot be read: {err.strerror}") from None
    data = load_yaml_text(text, str(path))
    if data is None:
        raise UserError(f"{path}: the file is empty (no keys); write the keys you mean to set (an empty {what} would "
                        "silently run on every default)")
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data
