"""MkDocs hook: the configuration reference, generated from kfactory/schema.py at every build.

Each key's type and default come from the dataclasses themselves; its description is the comment
beside the field in the source (or the comment lines just above it), so the page cannot fall behind
the schema. ``benchmarks/RESULTS.md`` and ``benchmarks/README.md`` are published the same way, read at build time.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import sys
import tokenize
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_PAGE = "reference/configuration.md"
RESULTS_PAGE = "explanation/benchmark-results.md"
SCRIPTS_PAGE = "explanation/benchmark-scripts.md"


@dataclasses.dataclass
class Key:
    """One documented key: its dotted name, type, default and the comment beside it in the schema."""

    name: str
    type: str
    default: str
    comment: str


def field_comments(source: str) -> dict[str, dict[str, str]]:
    """``{class name: {field name: comment}}`` for every annotated field of every class in ``source``.

    A field's comment is its trailing ``# ...`` on the same line, else the block of comment lines
    directly above it.
    """
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = (token.start[1], token.string.lstrip("#").strip())
    lines = source.splitlines()
    found: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        fields = found.setdefault(node.name, {})
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                fields[item.target.id] = _comment_of(item, comments, lines)
    return found


def _comment_of(item: ast.AnnAssign, comments: dict[int, tuple[int, str]], lines: list[str]) -> str:
    trailing = comments.get(item.end_lineno)
    if trailing and trailing[0] > item.col_offset:
        return trailing[1]
    above, line = [], item.lineno - 1
    while line in comments and lines[line - 1].strip().startswith("#"):
        above.insert(0, comments[line][1])
        line -= 1
    return " ".join(above)


def describe(hint: Any) -> str:
    """A type hint as the reference prints it: ``int``, ``str | null``, ``list[str] | null``, ``any``."""
    if hint is Any:
        return "any"
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:
        return " | ".join("null" if arg is type(None) else describe(arg) for arg in args)
    if typing.get_origin(hint) is list:
        return f"list[{describe(args[0])}]" if args else "list"
    return getattr(hint, "__name__", str(hint))


def default_of(field: dataclasses.Field) -> str:
    """The field's default as YAML would write it (``???``: a preset sets it)."""
    from omegaconf import MISSING

    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if value is MISSING:
        return "set by the preset"
    return _yaml(value)


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def schema_keys(schema: type, prefix: str, comments: dict[str, dict[str, str]]) -> list[tuple[type, str, list[Key]]]:
    """Sections ``(dataclass, dotted prefix, its keys)`` for ``schema`` and every dataclass nested in it."""
    hints = typing.get_type_hints(schema)
    keys, nested = [], []
    for field in dataclasses.fields(schema):
        name, hint = f"{prefix}{field.name}", hints[field.name]
        if dataclasses.is_dataclass(hint):
            nested.extend(schema_keys(hint, f"{name}.", comments))
            continue
        keys.append(Key(name, describe(hint), default_of(field), comments.get(schema.__name__, {}).get(field.name, "")))
    return [(schema, prefix.rstrip("."), keys), *nested]


def render_reference(root: Path = ROOT) -> str:
    """The configuration reference page, in Markdown."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from kfactory import schema

    comments = field_comments((root / "kfactory" / "schema.py").read_text())
    out = [
        "# Configuration reference",
        "",
        "Every key of the run config with its type and default, generated from `kfactory/schema.py` when the",
        "site is built. A preset (`conf/<group>/<option>.yaml`) holds only what differs from these defaults;",
        "`python run.py --cfg job` prints the composed values of one command. See [the config](config.md) for",
        "the groups and their options.",
        "",
    ]
    for cls, prefix, keys in schema_keys(schema.RunConfig, "", comments):
        out += [f"## `{prefix}`" if prefix else "## Top-level keys", ""]
        out += [_cell(_first_line(cls.__doc__)), ""] if cls.__doc__ else []
        out += _table(keys)
    out += [
        "## `optimizer.schedule`",
        "",
        "`optimizer/schedule=<name>` picks one of these; each takes only its own keys.",
        "",
    ]
    for name, cls in schema.SCHEDULES.items():
        keys = schema_keys(cls, "optimizer.schedule.", comments)[0][2]
        out += [f"### `{name}`", "", _cell(_first_line(cls.__doc__)), "", *_table(keys)]
    return "\n".join(out)


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").split())


def _table(keys: list[Key]) -> list[str]:
    rows = ["| key | type | default | |", "|---|---|---|---|"]
    for key in keys:
        rows.append(f"| `{key.name}` | {_cell(key.type)} | `{key.default}` | {_cell(key.comment)} |")
    return [*rows, ""]


def _cell(text: str) -> str:
    """``text`` safe in a table cell: Markdown's special characters escaped outside its code spans."""
    parts = re.split(r"(``.+?``|`[^`]+`)", text)
    return "".join(part if part.startswith("`") else re.sub(r"([\\`*_\[\]<>|])", r"\\\1", part) for part in parts)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """MkDocs' ``on_files`` event: add the generated pages to the site's files."""
    from mkdocs.structure.files import File

    root = Path(config.config_file_path).resolve().parent
    results = (root / "benchmarks" / "RESULTS.md").read_text()
    scripts = (root / "benchmarks" / "README.md").read_text().replace("(RESULTS.md)", "(benchmark-results.md)")
    pages = [(REFERENCE_PAGE, render_reference(root)), (RESULTS_PAGE, results), (SCRIPTS_PAGE, scripts)]
    for page, content in pages:
        files.append(File.generated(config, page, content=content))
    return files
