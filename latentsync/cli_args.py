"""What every command line shares: flags generated from a settings dataclass, and `run_cli`,
the one error handler around a `main`.

Flags: one `--name` per field of a settings dataclass, with the field's default, type, choices
and help, so a default is written once (in the dataclass) and every entry point's `--help`
shows it.

A field says how it appears on the command line with `setting(...)` (or any field whose metadata
has the same keys, such as `LipsyncOptions`' `option(...)`):

    @dataclass
    class Settings:
        port: int = setting(8000, "port to listen on")
        scheduler: str = setting("ddim", "sampler", choices=("ddim", "dpmpp"))

    parser = argparse.ArgumentParser()
    add_arguments(parser, Settings)
    settings = from_args(Settings, parser.parse_args())

A field without a default becomes a required flag; `bool` fields are `store_true` switches; a
tuple field takes as many values as its `metavar` names. `flags` adds other spellings (older
names keep working), `parse` converts the text (argparse `type=`), `cli=False` keeps a field off
the command line. `add_arguments(..., docs={name: {...}})` adds or replaces the metadata of
fields of a dataclass the caller does not own.

Errors: `run_cli(action)` runs an entry point's work; a UserError becomes one `error: <message>`
line and exit code 2, Ctrl-C / SIGTERM one line and 130 / 143, never a traceback. Nothing here
imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from typing import Any, Callable

from latentsync.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, Terminated, UserError, exit_on_termination

PLAIN_LOG_FORMAT = "%(message)s"
TRAIN_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WRAPPED_PREFIX = "latentsync.errors.UserError: "

ARGPARSE_KEYS = ("choices", "metavar", "required")  # metadata passed to argparse as-is (`default` too, even None)


def setting(default: Any = dataclasses.MISSING, help: str = "", *, choices=None, flags: tuple[str, ...] = (),
            parse=None, metavar=None, cli: bool = True, **extra) -> Any:
    """A dataclass field with its command-line flag (see the module docstring)."""
    metadata = dict(help=help, choices=choices, flags=tuple(flags), parse=parse, metavar=metavar, cli=cli, **extra)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def value_hint(hint):
    """A type hint without Optional (`int | None` -> `int`)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def value_type(hint) -> type:
    """The value type of a type hint without Optional: int, float, str, bool, tuple or list."""
    hint = value_hint(hint)
    return typing.get_origin(hint) or hint


def field_default(f: dataclasses.Field):
    """The field's default value (MISSING when it has none)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def argument(f: dataclasses.Field, hint, meta: dict) -> dict:
    """The keyword arguments of `parser.add_argument` for field `f` with type hint `hint`."""
    kind, default = value_type(hint), meta["default"] if "default" in meta else field_default(f)
    kwargs: dict[str, Any] = dict(help=meta.get("help") or None, dest=f.name)
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    if kind is bool:
        kwargs["action"] = "store_true"
    elif kind in (tuple, list) and not meta.get("parse"):
        items = typing.get_args(value_hint(hint)) or (str,)
        kwargs.update(type=items[0], nargs=len(meta["metavar"]) if meta.get("metavar") else "+")
    else:
        kwargs["type"] = meta.get("parse") or kind
    kwargs.update({key: meta[key] for key in ARGPARSE_KEYS if meta.get(key) is not None})
    return kwargs


def add_arguments(parser: argparse.ArgumentParser, cls, *, docs: dict[str, dict] | None = None,
                  exclude: tuple[str, ...] = ()) -> None:
    """One `--<field>` flag per command-line field of dataclass `cls` (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = {**f.metadata, **(docs or {}).get(f.name, {})}
        if f.name in exclude or not meta.get("cli", True):
            continue
        parser.add_argument(f"--{f.name}", *meta.get("flags", ()), **argument(f, hints[f.name], meta))


def from_args(cls, args: argparse.Namespace, **overrides):
    """An instance of dataclass `cls` from parsed flags (fields without a flag keep their default)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


# -- the one error handler ------------------------------------------------------------------------

def user_message(error: UserError) -> str:
    """The one-line message (a UserError raised in a DataLoader worker arrives wrapped in a traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return "UserError"
    last = lines[-1]
    return last[len(WRAPPED_PREFIX):] if last.startswith(WRAPPED_PREFIX) else lines[0]


def run_cli(action: Callable[[], object], log_format: str = PLAIN_LOG_FORMAT, log_level: int = logging.INFO) -> int:
    """Set up logging and call `action`; its int result is the exit code (None: 0). A UserError
    becomes `error: <message>` on stderr and exit code 2.

    Ctrl-C and SIGTERM unwind `action` (its `finally` blocks and context managers remove the
    run's temporary files) and end with one line and exit code 130 / 143, not a traceback.
    """
    logging.basicConfig(level=log_level, format=log_format)
    exit_on_termination()
    try:
        code = action()
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as e:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return int(e.code)
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one `error: ...` line (exit code 2), no usage."""

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


class DeprecatedFlag(argparse.Action):
    """An old spelling of a flag: stores into the new flag's `dest` and warns once per process,
    naming the new spelling. `parser.add_argument("--old", dest="new", action=DeprecatedFlag)`."""

    warned: set = set()

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string not in DeprecatedFlag.warned:
            DeprecatedFlag.warned.add(option_string)
            logging.getLogger(__name__).warning("%s is deprecated: use --%s", option_string, self.dest)
        setattr(namespace, self.dest, values)
