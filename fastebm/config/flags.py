"""The training options as command-line flags: one flag per :class:`~fastebm.config.options.Config` field,
generated from the dataclass (its type, its ``metadata`` help and group, the choices of
:data:`fastebm.config.limits.CHOICES`), with the presets' values shown in the help; and the one-line parser both
CLIs use (:class:`OneLineParser`). ``python -m fastebm.train`` builds its parser from these
(:func:`fastebm.train.build_parser`).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from .limits import CHOICES, flag
from .options import NONE, Config, resolve

DERIVED = ("n_classes",)  # Config fields set from the data, not options


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``PROG: error: ...`` with exit status 2, without the usage block
    (the style of every fastebm error): the parser of both CLIs."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _typed(base: type, optional: bool):
    """argparse ``type`` for a field: ``base`` values, and ``none`` → :data:`fastebm.config.options.NONE` if
    optional."""
    def parse(s: str):
        if optional and s.lower() == "none":
            return NONE
        return base(s)
    parse.__name__ = base.__name__  # argparse names the type in its error messages
    return parse


def _field_kind(tp) -> tuple[type, bool, bool]:
    """(element type, is a list, accepts None) of a Config field's annotation."""
    optional = False
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    if typing.get_origin(tp) is list:
        return (typing.get_args(tp) or (str,))[0], True, optional
    return tp, False, optional


def _shown(value) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) if value else "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _preset_view(argv) -> Config | None:
    """The Config that the --dataset / --model / --k of ``argv`` resolve to (for the help's defaults)."""
    pre = argparse.ArgumentParser(add_help=False)
    for name in ("dataset", "model", "k", "paper"):
        pre.add_argument(flag(name))
    known, _ = pre.parse_known_args(argv)
    given = {k: v for k, v in vars(known).items() if v is not None}
    try:
        if "k" in given:
            given["k"] = int(given["k"])
        return resolve(given)
    except ValueError:  # an invalid value is reported by the real parser
        return None


class PresetHelpParser(OneLineParser):
    """The training CLI's parser: the help's defaults (:func:`_preset_view` of ``argv``) are resolved when the help
    is formatted, so that a command that only parses resolves its Config once
    (:func:`fastebm.train.config_from_args`). :func:`add_config_flags` fills :attr:`shown_fields`."""

    def __init__(self, argv, **kw):
        super().__init__(**kw)
        self.view_argv, self.shown_fields = argv, []  # [(argparse action, Config field)]

    def format_help(self) -> str:
        if self.view_argv is not None:
            view, self.view_argv = _preset_view(self.view_argv), None
            for action, name in self.shown_fields:
                value = getattr(view, name, None)
                if value is not None:
                    action.help += f" (default: {_shown(value)})"
        return super().format_help()


def add_config_flags(p: PresetHelpParser) -> None:
    """One flag per :class:`~fastebm.config.options.Config` field (but :data:`DERIVED`): ``name`` becomes ``--name``
    (underscores → dashes) with the help line of its ``metadata["help"]``, in the help group
    ``metadata.get("group", "other options")``; bool fields get ``--x`` / ``--no-x``, list fields take several
    values, Optional fields also accept ``none``, and the choices come from :data:`fastebm.config.limits.CHOICES`.
    Every default is None (= not given: the preset decides); the help shows the value the presets resolve to,
    when it is formatted (:class:`PresetHelpParser`)."""
    hints = typing.get_type_hints(Config)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(Config):
        if f.name in DERIVED:
            continue
        meta = f.metadata
        title = meta.get("group", "other options")
        g = groups.get(title) or groups.setdefault(title, p.add_argument_group(title))
        base, is_list, optional = _field_kind(hints[f.name])
        kw: dict = dict(dest=f.name, default=None, help=meta.get("help", f.name.replace("_", " ")))
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            if is_list:
                kw.update(nargs="*", metavar=f.name.upper())
            if CHOICES.get(f.name):
                kw["choices"] = CHOICES[f.name]
            else:
                kw["type"] = _typed(base, optional)
        p.shown_fields.append((g.add_argument(flag(f.name), **kw), f.name))
