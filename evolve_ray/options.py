"""Where each config option applies, and the table of every option (docs/options.md).

A field of the schema (config.py) may say under which settings it has an effect, as a small
expression over other options: `is_("training.loss", "inpo")`, `not_("sft.data", "")`,
`has("run.eval_strategies", "vote")`, combined with `all_` and `any_`. `validate` refuses an
option set explicitly (in YAML or `--set`, to a value other than its default) where its
expression does not hold: it would have no effect. The same expressions write the "applies when"
column of docs/options.md (`python -m evolve_ray.options` rewrites it). Pure: no ray, no torch.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs/options.md"


def value_of(cfg: Any, key: str) -> Any:
    """The value of a dotted key ("training.lora.rank") in a config."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Cond:
    """`key` holds one of `values` (negate: none of them; contains: a list key holding any of them)."""

    key: str
    values: tuple[Any, ...]
    negate: bool = False
    contains: bool = False

    def holds(self, cfg: Any) -> bool:
        v = value_of(cfg, self.key)
        hit = any(x in v for x in self.values) if self.contains else v in self.values
        return hit != self.negate

    def text(self) -> str:
        if self.values in (("",), ([],)):
            return f"{self.key} is {'set' if self.negate else 'empty'}"
        shown = " or ".join(_show(v) for v in self.values)
        if self.contains:
            return f"{self.key} {'holds none of' if self.negate else 'holds'} {shown}"
        return f"{self.key}{'!=' if self.negate else '='}{shown}"

    def unmet(self, cfg: Any) -> list[str]:
        """What the config holds instead, when the condition fails ([] when it holds)."""
        if self.holds(cfg):
            return []
        v = value_of(cfg, self.key)
        if v in ("", []):
            return [f"{self.key} is empty"]
        return [f"{self.key}={_show(v)}"]


@dataclass(frozen=True)
class All:
    parts: tuple[Expr, ...]

    def holds(self, cfg: Any) -> bool:
        return all(p.holds(cfg) for p in self.parts)

    def text(self) -> str:
        return " and ".join(f"({p.text()})" if isinstance(p, AnyOf) else p.text() for p in self.parts)

    def unmet(self, cfg: Any) -> list[str]:
        return next((u for p in self.parts if (u := p.unmet(cfg))), [])


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Expr, ...]

    def holds(self, cfg: Any) -> bool:
        return any(p.holds(cfg) for p in self.parts)

    def text(self) -> str:
        return "; or ".join(p.text() for p in self.parts)

    def unmet(self, cfg: Any) -> list[str]:
        if self.holds(cfg):
            return []
        out: list[str] = []
        for p in self.parts:
            out += [u for u in p.unmet(cfg) if u not in out]
        return out


Expr = Cond | All | AnyOf


def is_(key: str, *values: Any) -> Cond:
    return Cond(key, values)


def not_(key: str, *values: Any) -> Cond:
    return Cond(key, values, negate=True)


def has(key: str, *values: Any) -> Cond:
    return Cond(key, values, contains=True)


def all_(*parts: Expr) -> All:
    return All(parts)


def any_(*parts: Expr) -> AnyOf:
    return AnyOf(parts)


# ----------------------------------------------------------------------------------------------
# Walking the schema


def fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, annotation) of every option of a config class, sections expanded, in schema order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from fields(tp, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, tp


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc,operator]


def ignored(cfg: Any, explicit: frozenset[str] | set[str]) -> str | None:
    """The refusal for the first option set explicitly, to a value other than its default, where
    the rest of `cfg` gives it no effect; None when there is none."""
    for key, f, _ in fields(type(cfg)):
        applies: Expr | None = f.metadata.get("applies")
        if key not in explicit or applies is None or applies.holds(cfg) or value_of(cfg, key) == default_of(f):
            continue
        why = " and ".join(applies.unmet(cfg))
        return f"{key} is set but {why}, where it has no effect (it applies only when {applies.text()}); remove it"
    return None


# ----------------------------------------------------------------------------------------------
# docs/options.md


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " \\| ".join(map(str, typing.get_args(tp)))
    if origin is not None and origin not in (list, dict):
        return " \\| ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return str(tp).replace("typing.", "")
    return tp.__name__


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def options_markdown() -> str:
    """docs/options.md: every option, its type and default, where it applies, whether a resume may change it."""
    from evolve_ray.config import Config

    lines = [
        "# Options",
        "",
        "Every option of the config schema (`evolve_ray/config.py`), generated from it by "
        "`python -m evolve_ray.options` (a test checks this file is current). *Applies when*: the "
        "settings under which the option has an effect; set explicitly (in YAML or `--set`) to a value "
        "other than its default anywhere else, it is refused in one line. *Resume*: whether "
        "`evolve-ray run --resume RUN --set ...` may change it.",
        "",
        "| option | type | default | applies when | resume | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for key, f, tp in fields(Config):
        applies = f.metadata.get("applies")
        default = _show(default_of(f))
        default = "`" + _cell(default) + "`" if default else '`""`'
        if len(default) > 40:
            default = default[:36] + "...`"
        lines.append(
            f"| `{key}` | {_type_name(tp)} | {default} | {_cell(applies.text()) if applies else 'always'} | "
            f"{'yes' if f.metadata.get('resume') else ''} | {_cell(f.metadata.get('help', ''))} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    DOC.write_text(options_markdown(), encoding="utf-8")
    print(f"wrote {DOC}", file=sys.stderr)
