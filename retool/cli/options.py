"""The command line's shared options, made from the settings' own declarations.

Each shared option exists once: a field of ``EngineSpec``, ``SandboxSpec`` (with the ``cli`` fields
of ``SandboxLimits``) or ``RolloutConfig`` (with the ``cli`` fields of its ``SamplingParams``), its
default and its help text in the field's metadata. ``with_settings("engine", "sandbox", "rollout")``
adds those options to a command and hands it the built settings under those names; a command that
deliberately differs from a default says so where it is declared (``defaults={...}``, with the
reason beside it). Settings that cannot be built (an option the engine does not take, an unknown
dialect) exit with status 2 and the reason.

Not here: what the commands do (the other ``retool.cli`` modules hand off to the library).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Callable

import typer

from retool.engines.spec import EngineSpec
from retool.rollout import RolloutConfig
from retool.sandbox.spec import SandboxSpec


@dataclass(frozen=True)
class _Option:
    group: str
    path: tuple[str, ...]  # where the value goes in the settings: ("sampling", "temperature")
    flags: tuple[str, ...]
    help: str
    annotation: Any
    default: Any

    @property
    def name(self) -> str:
        """The option's name, as ``defaults`` take it: its flag without dashes (``top_p``)."""
        return self.flags[0].split("/")[0].lstrip("-").replace("-", "_")

    @property
    def param(self) -> str:
        """The generated parameter (never one of the command's own, nor a group's name)."""
        return f"_{self.group}__{'__'.join(self.path)}"


def _options(group: str, cls: type, only_cli: bool, prefix: tuple[str, ...] = (), base: Any = None) -> list[_Option]:
    """The options of ``cls``'s fields; ``base``: the instance whose values are the defaults (a nested
    dataclass takes its parent's default, ``RolloutConfig().sampling``, not its own class's)."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in fields(cls):
        if base is not None:
            default = getattr(base, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if is_dataclass(hints[f.name]):
            found += _options(group, hints[f.name], True, (*prefix, f.name), default)
            continue
        meta = f.metadata
        if only_cli and not meta.get("cli"):
            continue
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        flags = [f"{flag}/--no-{flag[2:]}" if hints[f.name] is bool else flag]
        flags += [meta[k] for k in ("short", "also") if k in meta]
        found.append(_Option(group, (*prefix, f.name), tuple(flags), meta.get("help", ""), hints[f.name], default))
    return found


GROUPS: dict[str, tuple[type, bool]] = {"engine": (EngineSpec, False), "sandbox": (SandboxSpec, False),
                                        "rollout": (RolloutConfig, True)}


def group_options(group: str) -> list[_Option]:
    cls, only_cli = GROUPS[group]
    return _options(group, cls, only_cli)


def build(cls: type, values: dict[tuple[str, ...], Any]) -> Any:
    """``cls()`` with the option values put where their paths say (nested settings included)."""
    nested: dict[str, dict[tuple[str, ...], Any]] = {}
    top: dict[str, Any] = {}
    for path, value in values.items():
        if len(path) == 1:
            top[path[0]] = value
        else:
            nested.setdefault(path[0], {})[path[1:]] = value
    base = cls()
    for name, inner in nested.items():
        top[name] = _replace_nested(getattr(base, name), inner)
    return replace(base, **top) if top else base


def _replace_nested(obj: Any, values: dict[tuple[str, ...], Any]) -> Any:
    flat = {path[0]: value for path, value in values.items() if len(path) == 1}
    deeper: dict[str, dict[tuple[str, ...], Any]] = {}
    for path, value in values.items():
        if len(path) > 1:
            deeper.setdefault(path[0], {})[path[1:]] = value
    for name, inner in deeper.items():
        flat[name] = _replace_nested(getattr(obj, name), inner)
    return replace(obj, **flat)


def defaults_of(**settings: Any) -> dict[str, Any]:
    """Option defaults (by name) that make a group build ``settings`` (``rollout=EVAL_ROLLOUT``):
    a command whose defaults are a preset declares the preset once, where it belongs."""
    out = {}
    for group, instance in settings.items():
        for option in group_options(group):
            value = instance
            for part in option.path:
                value = getattr(value, part)
            if value != option.default:
                out[option.name] = value
    return out


def with_settings(*groups: str, defaults: dict[str, Any] | None = None) -> Callable[[Callable], Callable]:
    """Give a command the options of ``groups`` and call it with the settings built from them
    (keyword arguments named like the groups). ``defaults`` replaces option defaults by name."""
    defaults = defaults or {}
    options = [option for group in groups for option in group_options(group)]
    unknown = set(defaults) - {o.name for o in options}
    if unknown:
        raise TypeError(f"defaults for options that do not exist: {sorted(unknown)}")

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        own = [p for name, p in signature.parameters.items() if name not in groups]
        generated = [inspect.Parameter(o.param, inspect.Parameter.KEYWORD_ONLY, annotation=o.annotation,
                                       default=typer.Option(defaults.get(o.name, o.default), *o.flags, help=o.help))
                     for o in options]

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            settings = {}
            explicit = _explicit(options, kwargs.pop(_CONTEXT, None))
            try:
                for group in groups:
                    cls = GROUPS[group][0]
                    settings[group] = build(cls, {o.path: kwargs.pop(o.param) for o in options if o.group == group})
                if "engine" in settings and "rollout" in settings:  # the model's own prompt (its card)
                    from retool.model_card import rollout_for

                    settings["rollout"] = rollout_for(settings["engine"].model, settings["rollout"], explicit)
            except ValueError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
            return command(**kwargs, **settings)

        context = inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        parameters = [*own, *generated, context]
        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}  # what typer reads the types from
        return run

    return decorate


_CONTEXT = "_retool_context"  # the generated parameter typer fills with the command's context


def _explicit(options: list[_Option], ctx: Any) -> frozenset[str]:
    """The option names the user gave on the command line (or by environment), not defaults."""
    if ctx is None:
        return frozenset(o.name for o in options)  # called from Python: every value is the caller's
    given = {"COMMANDLINE", "ENVIRONMENT", "PROMPT"}
    return frozenset(o.name for o in options if getattr(ctx.get_parameter_source(o.param), "name", None) in given)
