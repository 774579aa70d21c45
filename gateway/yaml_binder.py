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
    """One mistake; ``line`` and ``column`` are None when it has no place in the text
    (the file is missing, too big, not text)."""

    file: str
    line: int | None
    column: int | None
    message: str
    warning: bool = False

    def __str__(self) -> str:
        prefix = "warning: " if self.warning else ""
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {prefix}{self.message}"


class ConfigError(Exception):
    """The config file can't be used; ``problems`` say where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# What a config can hold, with room to spare; beyond these it is a mistake or an attack
# (a YAML bomb, a device file) and must not cost the daemon its memory or its stack.
# PyYAML's pure-Python composer takes ~10 s per MiB of dense flow YAML here (more on a Pi),
# blocking the event loop during a reload; the example config is 7 KiB.
MAX_CONFIG_BYTES = 256 << 10
MAX_SECRET_BYTES = 64 << 10
MAX_DEPTH = 32  # the schema itself is 5 levels deep
MAX_VALUES = 100_000  # values bound, aliases counted each time they are used


class Unreadable(Exception):
    """A file that can't be a config or a secret; the message says why, without position.

    ``wrong_file`` is True when the file is readable but can't be what was meant (a
    directory, a device, far too big); False when reading it failed (permissions).
    """

    def __init__(self, message: str, wrong_file: bool = True) -> None:
        super().__init__(message)
        self.wrong_file = wrong_file


def read_bounded(path: Path, limit: int) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file ``path``, refusing anything else or anything bigger.

    Opened without blocking, so that a FIFO (or a device) is refused instead of hanging
    or feeding us forever; FileNotFoundError is left to the caller, which knows what
    the file is for.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise  # the caller knows what the file is for, and what to say
    except OSError as exc:
        raise Unreadable(f"cannot be read: {exc.strerror}", wrong_file=False) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable(f"is {_file_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise Unreadable(f"is {info.st_size} bytes, more than the {limit} allowed")
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise Unreadable(f"cannot be read: {exc.strerror}", wrong_file=False) from None
    finally:
        os.close(fd)
    if len(data) > limit:  # grew while we read
        raise Unreadable(f"is more than the {limit} bytes allowed")
    return data, info


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def decode_text(data: bytes, filename: str) -> str:
    """UTF-8 text, or ConfigError placing the first byte that is not."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise ConfigError([Problem(filename, None, None, f"is {name} text: save it as UTF-8")])
    nul = data.find(b"\0")
    if nul >= 0:
        line, column = _position(data, nul)
        raise ConfigError(
            [
                Problem(
                    filename,
                    line,
                    column,
                    "a NUL byte: this is binary, or UTF-16/UTF-32 text; save it as UTF-8",
                )
            ]
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _position(data, exc.start)
        byte = data[exc.start]
        raise ConfigError(
            [Problem(filename, line, column, f"byte 0x{byte:02x} is not UTF-8: save it as UTF-8")]
        ) from None


_BOMS = [
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
]


def _position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of byte ``offset``."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


class _TooMany(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's composer recurses once per nesting level: stop it long before Python's
    stack does. (The parser and scanner keep explicit stacks and need no limit.)"""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_DEPTH} levels deep (the settings need 5)",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


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
        self.budget = MAX_VALUES
        self.base_dir = Path(filename).resolve().parent if filename != "<string>" else Path.cwd()

    def problem(
        self, node: yaml.Node | None, path: str, message: str, warning: bool = False
    ) -> None:
        line, column = (node.start_mark.line + 1, node.start_mark.column + 1) if node else (1, 1)
        where = f"{path}: " if path else ""
        self.problems.append(Problem(self.filename, line, column, where + message, warning))

    # -- dispatch ----------------------------------------------------------------------------

    def bind(self, node: yaml.Node, tp: Any, path: str, meta: dict[str, Any]) -> Any:
        # An alias is a reference: bound once per use, a few lines can stand for billions
        # of values ("billion laughs"). Count every use, and give up past the limit.
        self.budget -= 1
        if self.budget < 0:
            raise _TooMany(node)
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
            if not isinstance(key_node, yaml.ScalarNode):
                # str() of a node is its whole subtree, aliases expanded: never build it.
                self.problem(key_node, path, "keys must be plain names")
                return _Invalid
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
        shown = repr(str(secret_path))
        try:
            data, info = read_bounded(secret_path, MAX_SECRET_BYTES)
            text = data.decode("utf-8").strip()
        except FileNotFoundError:
            self.problem(
                node,
                path,
                f"secret file {shown} does not exist: create it "
                "with the secret on one line, mode 0600",
            )
            return _Invalid
        except Unreadable as exc:
            advice = (
                f": point {path} at a file holding the secret on one line "
                f"(at most {MAX_SECRET_BYTES >> 10} KiB)"
                if exc.wrong_file
                else ""
            )
            self.problem(node, path, f"secret file {shown} {exc}{advice}")
            return _Invalid
        except UnicodeDecodeError:
            # Never quote the bytes: they are (part of) the secret.
            self.problem(node, path, f"secret file {shown} is not UTF-8 text")
            return _Invalid
        if not text:
            self.problem(node, path, f"secret file {shown} is empty")
            return _Invalid
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            mode = stat.S_IMODE(info.st_mode)
            self.problem(
                node,
                path,
                f"secret file {shown} is readable by group or "
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
        root = yaml.compose(text, Loader=_BoundedLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        reason = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            [Problem(filename, line, column, f"YAML syntax error: {reason}")]
        ) from None
    except yaml.reader.ReaderError as exc:
        line, column = _text_position(text, exc.position)
        reason = f"character #x{exc.character:04x} is not allowed in YAML: {exc.reason}"
        if isinstance(exc.character, bytes):
            reason = f"not {exc.encoding} text: {exc.reason}"
        raise ConfigError([Problem(filename, line, column, reason)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(filename, None, None, f"YAML error: {exc}")]) from None
    except RecursionError:  # the depth limit should come first; never a traceback anyway
        raise ConfigError([Problem(filename, None, None, "nested too deeply")]) from None
    if root is None:  # an empty file: every default
        start = yaml.Mark(filename, 0, 0, 0, "", 0)
        root = yaml.MappingNode("tag:yaml.org,2002:map", [], start, start)
    try:
        result = binder.bind(root, cls, "", {})
    except _TooMany as exc:
        binder.problem(
            exc.node,
            "",
            f"more than {MAX_VALUES} values once aliases (*name) are expanded: "
            "is this a YAML bomb? Write the settings out, or use fewer aliases",
        )
        raise ConfigError(binder.problems) from None
    except RecursionError:
        raise ConfigError([Problem(filename, None, None, "nested too deeply")]) from None
    errors = [p for p in binder.problems if not p.warning]
    if errors or result is _Invalid:
        raise ConfigError(
            binder.problems or [Problem(filename, None, None, "invalid configuration")]
        )
    return result, [p for p in binder.problems if p.warning]


def _text_position(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


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
    if not isinstance(node, yaml.ScalarNode):
        return _describe(node)
    value = str(node.value)
    # A huge value would make a huge message; enough of it to recognise the line.
    return repr(value) if len(value) <= 80 else repr(value[:60]) + f"... ({len(value)} chars)"


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
