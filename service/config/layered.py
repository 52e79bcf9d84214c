"""Layered settings: environment over a TOML file over defaults, with readable errors.

Shared by every program's settings model (`fraud-serve`'s and `fraud-train`'s): the one
place that knows how the sources stack and how a validation error is told to a person.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar, cast

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, TomlConfigSettingsSource

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class ConfigError(Exception):
    """The configuration file or environment holds an invalid value."""


def load_layered_settings(settings_cls: type[SettingsT], config_file: Path | None) -> SettingsT:
    """An instance of `settings_cls` from its environment over `config_file` over defaults.

    Raises `ConfigError` naming the source and each invalid field (dotted) with the reason.
    """
    if config_file is not None:
        _check_toml(config_file)
    try:
        return _with_toml_file(settings_cls, config_file)()
    except ValidationError as error:
        # `from None`: the validation error's text carries raw input values, secrets included.
        raise ConfigError(_describe(error, settings_cls, config_file)) from None


def _check_toml(config_file: Path) -> None:
    try:
        tomllib.loads(config_file.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{config_file}: cannot read ({error.strerror})") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{config_file}: not valid TOML ({error})") from error


def _with_toml_file(settings_cls: type[SettingsT], config_file: Path | None) -> type[SettingsT]:
    if config_file is None:
        return settings_cls

    def settings_customise_sources(
        cls: type[BaseSettings],
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file)
        return (init_settings, env_settings, toml)

    # A subclass per file, named as its base: the file is a source, and sources are per class.
    namespace = {"settings_customise_sources": classmethod(settings_customise_sources)}
    return cast(type[SettingsT], type(settings_cls.__name__, (settings_cls,), namespace))


def _describe(
    error: ValidationError, settings_cls: type[BaseSettings], config_file: Path | None
) -> str:
    environment = f"{settings_cls.model_config.get('env_prefix', '')}* environment"
    where = f"{config_file} or {environment}" if config_file else environment
    problems = "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
    )
    return f"invalid configuration ({where}): {problems}"
