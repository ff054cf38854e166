"""Every setting of wgslirp: its name, default, limits and meaning, and how it is loaded.

Unlike the Go original, a value that cannot be parsed is an error rather than a
silent fallback to the default: a typo in a port or an interval should stop the
router at start-up with a message naming the variable, not surface later as
mysterious behaviour.

The package is split by concern, each module importable alone:

- ``schema``: the msgspec Structs, the single source of truth for every setting;
- ``fields``: that metadata read back as one flat list the other modules walk;
- ``values``: pure parsers from text to values (no settings, files or network);
- ``wgquick``: the wg-quick INI reader;
- ``load``: environment + file into a Config, with host names resolved by a callable;
- ``render``: a loaded Config shown with secrets hidden (the one ``check-config`` path);
- ``docs``: docs/configuration.md generated from the schema.

This module is the public face: importers use ``wgslirp.config`` and never need to
know which module holds a name.
"""

from wgslirp.config.docs import ORIGINAL_VARIABLES, Setting, render_markdown, settings_table
from wgslirp.config.load import (
    changed_settings,
    load_config,
    load_config_sourced,
    parse_setting,
    resolve_ipv4,
    unknown_variables,
)
from wgslirp.config.render import (
    EXIT_CONFIG,
    check_config,
    main,
    redacted,
    render_check,
    render_effective,
)
from wgslirp.config.schema import (
    Config,
    ConfigError,
    EgressConfig,
    HealthConfig,
    MetricsConfig,
    PeerConfig,
    TcpConfig,
    UdpConfig,
    default_state_dir,
)
from wgslirp.config.values import format_duration, parse_duration
from wgslirp.config.wgquick import WgSection, parse_wg_quick

__all__ = [
    "EXIT_CONFIG",
    "ORIGINAL_VARIABLES",
    "Config",
    "ConfigError",
    "EgressConfig",
    "HealthConfig",
    "MetricsConfig",
    "PeerConfig",
    "Setting",
    "TcpConfig",
    "UdpConfig",
    "WgSection",
    "changed_settings",
    "check_config",
    "default_state_dir",
    "format_duration",
    "load_config",
    "load_config_sourced",
    "main",
    "parse_duration",
    "parse_setting",
    "parse_wg_quick",
    "redacted",
    "render_check",
    "render_effective",
    "render_markdown",
    "resolve_ipv4",
    "settings_table",
    "unknown_variables",
]
