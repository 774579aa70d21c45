"""Binds a YAML document to typed dataclasses, keeping each value's file position.

The config module declares *what* the settings are; this module turns YAML nodes into
those dataclasses and, when it can't, says where and why: ``FILE:LINE:COL: key.path:
message``. Everything the user can get wrong is reported together, not one per run.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import stat
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from gateway.durations import format_duration, parse_duration


class Duration(float):
    """Seconds, written in the file as ``30s`` / ``5m`` / ``2h``."""

    def __repr__(self) -> str:
        return f"Duration({float(self)!r})"


class Secret:
    """A secret value that never prints itself (logs, reprs, tracebacks)."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "inline") -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<hidden>, source={self.source!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SecretFile(Secret):
    """A secret read from the file a ``*_file`` key names (its path is shown, not its value)."""


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    column: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        prefix = "warning: " if self.warning else ""
        return f"{self.file}:{self.line}:{self.column}: {prefix}{self.message}"


class ConfigError(Exception):
    """The config file can't be used; ``problems`` say where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    check: Callable[[Any], None] | None = None,
) -> Any:
    """A dataclass field with the limits the loader enforces and reports."""
    meta = {"min": min, "max": max, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class _Binder:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[Problem] = []
        self.base_dir = Path(filename).resolve().parent if filename != "<string>" else Path.cwd()

    def problem(
        self, node: yaml.Node | None, path: str, message: str, warning: bool = False
    ) -> None:
        line, column = (node.start_mark.line + 1, node.start_mark.column + 1) if node else (1, 1)
        where = f"{path}: " if path else ""
        self.problems.append(Problem(self.filename, line, column, where + message, warning))

    # -- dispatch ----------------------------------------------------------------------------

    def bind(self, node: yaml.Node, tp: Any, path: str, meta: dict[str, Any]) -> Any:
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if _is_null(node):
                return None
            return self.bind(node, args[0], path, meta)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.bind_dataclass(node, tp, path)
        if origin is list:
            return self.bind_list(node, typing.get_args(tp)[0], path, meta)
        if origin is dict:
            return self.bind_dict(node, typing.get_args(tp)[1], path, meta)
        if origin is Literal:
            return self.bind_choice(node, typing.get_args(tp), path)
        return self.bind_scalar(node, tp, path, meta)

    def bind_dataclass(self, node: yaml.Node, cls: type, path: str) -> Any:
        if _is_null(node):
            node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, path, f"expected a mapping of settings, got {_describe(node)}")
            return _Invalid
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        values: dict[str, Any] = {}
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.problem(key_node, path, "keys must be plain names")
                continue
            sub = f"{path}.{key}" if path else key
            if key in seen:
                self.problem(key_node, sub, f"duplicate key (first set on line {_line(seen[key])})")
                continue
            seen[key] = key_node
            if key not in fields:
                hint = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
                known = ", ".join(sorted(fields))
                advice = f"did you mean {hint[0]!r}?" if hint else f"known keys: {known}"
                self.problem(key_node, sub, f"unknown key {key!r}: {advice}")
                continue
            spec = fields[key]
            values[key] = self.bind(value_node, hints[key], sub, dict(spec.metadata))
        for name, spec in fields.items():
            if name in values:
                continue
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                self.problem(node, f"{path}.{name}" if path else name, "required key is missing")
                values[name] = _Invalid
        if any(v is _Invalid for v in values.values()):
            return _Invalid
        try:
            instance = cls(**values)
        except ValueError as exc:
            self.problem(node, path, str(exc))
            return _Invalid
        check = getattr(instance, "check", None)
        if callable(check):
            for key, message in check():
                where = seen.get(key, node)
                target = _value_node(node, key) or where
                self.problem(target, f"{path}.{key}" if path else key, message)
        return instance

    def bind_list(self, node: yaml.Node, item: Any, path: str, meta: dict[str, Any]) -> Any:
        if _is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, path, f"expected a list, got {_describe(node)}")
            return _Invalid
        out = [self.bind(child, item, f"{path}[{i}]", meta) for i, child in enumerate(node.value)]
        return _Invalid if _Invalid in out else out

    def bind_dict(self, node: yaml.Node, item: Any, path: str, meta: dict[str, Any]) -> Any:
        if _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, path, f"expected a mapping, got {_describe(node)}")
            return _Invalid
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in out:
                self.problem(key_node, f"{path}.{key}", "duplicate key")
                continue
            out[key] = self.bind(value_node, item, f"{path}.{key}", meta)
        return _Invalid if any(v is _Invalid for v in out.values()) else out

    def bind_choice(self, node: yaml.Node, choices: tuple[Any, ...], path: str) -> Any:
        raw = node.value if isinstance(node, yaml.ScalarNode) else None
        # YAML reads `never`/`off`/`none` fine, but `no`/`yes` become booleans in YAML 1.1:
        # compare against the text the user typed.
        if raw in [str(c) for c in choices]:
            return next(c for c in choices if str(c) == raw)
        wanted = " | ".join(str(c) for c in choices)
        self.problem(node, path, f"{_quote(node)} is not one of: {wanted}")
        return _Invalid

    def bind_scalar(self, node: yaml.Node, tp: Any, path: str, meta: dict[str, Any]) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, path, f"expected {_type_name(tp)}, got {_describe(node)}")
            return _Invalid
        raw = node.value
        tag = node.tag
        value: Any
        try:
            if tp is bool:
                if tag != "tag:yaml.org,2002:bool" and raw not in ("true", "false"):
                    raise ValueError(f"{_quote(node)} is not true or false")
                value = raw.lower() in ("true", "yes", "on")
            elif tp is int:
                if tag != "tag:yaml.org,2002:int":
                    raise ValueError(f"{_quote(node)} is not a whole number")
                value = int(raw)
            elif tp is float:
                if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
                    raise ValueError(f"{_quote(node)} is not a number")
                value = float(raw)
            elif tp is Duration:
                if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
                    raise ValueError(f"{raw} has no unit: write e.g. {raw}s, {raw}m or {raw}h")
                value = Duration(parse_duration(raw))
            elif tp is str:
                if tag != "tag:yaml.org,2002:str":
                    raise ValueError(f"{_quote(node)} should be text: put it in quotes")
                value = raw
            elif tp is Secret:
                value = Secret(raw)
            elif tp is SecretFile:
                value = self.read_secret_file(node, raw, path)
            else:  # pragma: no cover - a schema bug, not a user error
                raise TypeError(f"config schema uses unsupported type {tp!r} at {path}")
        except ValueError as exc:
            self.problem(node, path, str(exc))
            return _Invalid
        if value is _Invalid:
            return value
        return self.check_limits(node, value, path, meta)

    def check_limits(self, node: yaml.Node, value: Any, path: str, meta: dict[str, Any]) -> Any:
        low, high, check = meta.get("min"), meta.get("max"), meta.get("check")
        if (low is not None and value < low) or (high is not None and value > high):
            shown = node.value if isinstance(node, yaml.ScalarNode) else value
            bounds = _bounds(low, high, isinstance(value, Duration))
            self.problem(node, path, f"{shown} is out of range: expected {bounds}")
            return _Invalid
        if check is not None:
            try:
                check(value)
            except ValueError as exc:
                self.problem(node, path, str(exc))
                return _Invalid
        return value

    def read_secret_file(self, node: yaml.Node, raw: str, path: str) -> Any:
        secret_path = Path(os.path.expanduser(raw))
        if not secret_path.is_absolute():
            secret_path = self.base_dir / secret_path
        try:
            info = secret_path.stat()
            text = secret_path.read_text().strip()
        except FileNotFoundError:
            self.problem(
                node,
                path,
                f"secret file {str(secret_path)!r} does not exist: create it "
                "with the secret on one line, mode 0600",
            )
            return _Invalid
        except OSError as exc:
            self.problem(
                node, path, f"cannot read secret file {str(secret_path)!r}: {exc.strerror}"
            )
            return _Invalid
        if not text:
            self.problem(node, path, f"secret file {str(secret_path)!r} is empty")
            return _Invalid
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            mode = stat.S_IMODE(info.st_mode)
            self.problem(
                node,
                path,
                f"secret file {str(secret_path)!r} is readable by group or "
                f"others (mode {mode:04o}): run chmod 600 {secret_path}",
                warning=True,
            )
        return SecretFile(text, source=str(secret_path))


class _InvalidType:
    def __repr__(self) -> str:
        return "<invalid>"


_Invalid: Any = _InvalidType()


def bind_document(text: str, filename: str, cls: type) -> tuple[Any, list[Problem]]:
    """Parse ``text`` and bind it to ``cls``; raise ConfigError listing every problem."""
    binder = _Binder(filename)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            [Problem(filename, line, column, f"YAML syntax error: {reason}")]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(filename, 1, 1, f"YAML error: {exc}")]) from None
    if root is None:  # an empty file: every default
        start = yaml.Mark(filename, 0, 0, 0, "", 0)
        root = yaml.MappingNode("tag:yaml.org,2002:map", [], start, start)
    result = binder.bind(root, cls, "", {})
    errors = [p for p in binder.problems if not p.warning]
    if errors or result is _Invalid:
        raise ConfigError(binder.problems or [Problem(filename, 1, 1, "invalid configuration")])
    return result, [p for p in binder.problems if p.warning]


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _value_node(mapping: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(mapping, yaml.MappingNode):
        for key_node, value_node in mapping.value:
            if getattr(key_node, "value", None) == key:
                return typing.cast(yaml.Node, value_node)
    return None


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _quote(node)


def _quote(node: yaml.Node) -> str:
    return repr(node.value) if isinstance(node, yaml.ScalarNode) else _describe(node)


def _type_name(tp: Any) -> str:
    return {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "text",
        Duration: "a duration like 30s",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _bounds(low: float | None, high: float | None, duration: bool) -> str:
    def show(v: float) -> str:
        return format_duration(v) if duration else f"{v:g}"

    if low is not None and high is not None:
        return f"between {show(low)} and {show(high)}"
    if low is not None:
        return f"at least {show(low)}"
    return f"at most {show(high)}" if high is not None else "a valid value"
