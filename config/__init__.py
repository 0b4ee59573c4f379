"""Configuration: the only place environment variables are read."""

from config.settings import (
    ConfigError,
    DataFastWebsite,
    Rate,
    Settings,
    get_settings,
    load_settings,
)

__all__ = [
    "ConfigError",
    "DataFastWebsite",
    "Rate",
    "Settings",
    "get_settings",
    "load_settings",
]
