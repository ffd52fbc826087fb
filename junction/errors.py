"""The root of Junction's error hierarchy.

Every error Junction raises on purpose derives from :class:`JunctionError`; each package
subclasses it once, so callers can catch one package's errors without catching
programming mistakes. Foreign errors (YAML, gRPC, aiohttp, OSError) are mapped to these
at the package boundary (as httpx does)::

    JunctionError
    ├── ConfigError           junction.config.errors    (carries the YAML path)
    ├── CatalogError          junction.catalog.errors   (ConsulSettingError)
    ├── XdsError              junction.xds.errors       (XdsProtocolError, BootstrapError,
    │                                                    EnvoyValidationError, XdsServerError)
    ├── ExtProcError          junction.extproc.errors   (BadMessage)
    ├── AlsError              junction.als.errors       (SinkError, ReportError)
    ├── CanaryError           junction.canary.errors    (StateFormatError, StoreError, ...)
    ├── EnvoyError            junction.envoy_process
    └── SettingsError         junction.app              (flags that do not fit together)

``tests/unit/test_errors.py`` checks that every public exception class of a package
derives from its base.
"""

from __future__ import annotations

__all__ = ["JunctionError"]


class JunctionError(Exception):
    """Base class of every error Junction raises deliberately."""
