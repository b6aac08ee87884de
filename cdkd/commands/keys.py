"""The config keys for `--help`, generated from the dataclasses in `cdkd.config` so that a new field shows up
without anyone editing a help text: type, default, choices, method presets, and the field's own `# comment`."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from .. import config as C

# List fields whose items are dataclasses (what `cdkd.config._build` builds them into): documented per item field.
LIST_ITEMS: dict[str, type] = {"teachers": C.TeacherSpec}


@dataclass(frozen=True)
class Key:
    """One config key as `--help` shows it."""
    name: str                       # dotted: train.amp; list items: teachers[].path
    type: str
    default: Any
    choices: tuple[str, ...] = ()
    help: str = ""
    yaml_only: bool = False         # lists and mappings: set in the YAML file


def _comments(source: str) -> dict[int, tuple[int, str]]:
    """line -> (column, text) of every comment in `source`, and whether that line holds code too (col < 0)."""
    out: dict[int, tuple[int, str]] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    return {line: (-1 if line in code_lines else col, text) for line, (col, text) in out.items()}


@cache
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its trailing `# comment`, with the comment-only lines indented under it that continue it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source shipped (a frozen or byte-code-only install): keys without help
        return {}
    comments = _comments(source)
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        trailing = [comments[n][1] for n in range(node.lineno, node.end_lineno + 1)
                    if comments.get(n, (0,))[0] == -1]
        line = node.end_lineno + 1
        while trailing and comments.get(line, (0,))[0] > node.col_offset:  # a continuation line
            trailing.append(comments[line][1])
            line += 1
        out[node.target.id] = " ".join(trailing)
    return out


def comments_above(source: str, lineno: int) -> list[str]:
    """The block of comment-only lines right above line `lineno` of `source` (1-based), top first."""
    comments, block = _comments(source), []
    line = lineno - 1
    while comments.get(line, (-1,))[0] >= 0:
        block.insert(0, comments[line][1])
        line -= 1
    return block


def first_sentence(text: str) -> str:
    """The first sentence of the first paragraph of `text` (a docstring or a comment block), on one line."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]


def _type_name(typ: Any) -> str:
    return getattr(typing.get_origin(typ) or typ, "__name__", str(typ))


def config_keys(cls: type = C.Config, prefix: str = "") -> list[Key]:
    """Every leaf key of `cls`, walking nested dataclasses (and the item type of LIST_ITEMS fields)."""
    hints, defaults, docs = typing.get_type_hints(cls), cls(), field_comments(cls)
    keys: list[Key] = []
    for f in dataclasses.fields(cls):
        name, typ, default = f"{prefix}{f.name}", hints[f.name], getattr(defaults, f.name)
        if dataclasses.is_dataclass(typ):
            keys += config_keys(typ, f"{name}.")
            continue
        path = tuple(name.split("."))
        choices = C.METHODS if path == ("method",) else C.CHOICES.get(path, ())
        yaml_only = _type_name(typ) in ("list", "dict")
        keys.append(Key(name, _type_name(typ), default, tuple(choices), docs.get(f.name, ""), yaml_only))
        if f.name in LIST_ITEMS and not prefix:
            keys += [dataclasses.replace(k, yaml_only=True) for k in config_keys(LIST_ITEMS[f.name], f"{name}[].")]
    return keys


def preset_values(name: str) -> dict[str, Any]:
    """method -> the value its preset gives dotted key `name`, for the methods that change it."""
    out = {}
    for method, preset in C.PRESETS.items():
        value: Any = preset
        for part in name.split("."):
            value = value.get(part, KeyError) if isinstance(value, dict) else KeyError
        if value is not KeyError:
            out[method] = value
    return out


def method_descriptions() -> dict[str, str]:
    """method -> the first sentence of the comment above its preset in `cdkd/config.py` ('' without one)."""
    source = inspect.getsource(C)
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "PRESETS" for t in targets) and isinstance(node.value, ast.Dict):
            lines = {k.value: comments_above(source, k.lineno) for k in node.value.keys if isinstance(k, ast.Constant)}
            return {m: first_sentence("\n".join(lines.get(m, []))) for m in C.METHODS}
    return {m: "" for m in C.METHODS}


def section_doc(cls: type) -> str:
    """A config section's own docstring, first sentence ('' for the one dataclasses writes: `Name(field: ...)`)."""
    doc = cls.__doc__ or ""
    return "" if doc.startswith(f"{cls.__name__}(") else first_sentence(doc)


def format_keys(width: int = 30) -> str:
    """The `config keys` section of `--help`: one line per key (help text wrapped under it)."""
    lines = ["config keys: --section.key=value (a Python/YAML literal), applied after the method's preset and the",
             "--config file; lists and mappings (yaml) are set in the --config file", ""]
    section, keys = None, config_keys()
    width = max(width, *(len(k.name) + 2 for k in keys))  # a name never runs into its type
    for k in keys:
        head = k.name.split(".")[0].split("[")[0]
        if head != section and "." in k.name:
            section = head
            doc = section_doc(LIST_ITEMS.get(head) or type(getattr(C.Config(), head)))
            lines.append(f"{head}:{'  ' + doc if doc else ''}")
        spec = f"{k.type} = {k.default!r}"
        if k.choices:
            spec += f"  {{{', '.join(k.choices)}}}"
        if k.yaml_only:
            spec += "  (yaml)"
        presets = preset_values(k.name)
        if presets:
            spec += "  [" + ", ".join(f"{m}: {v!r}" for m, v in presets.items()) + "]"
        lines.append(f"  {k.name:<{width}}{spec}")
        if k.help:
            lines += textwrap.wrap(k.help, 116, initial_indent=" " * (width + 4), subsequent_indent=" " * (width + 4))
    return "\n".join(lines)
