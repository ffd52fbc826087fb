"""The catalog package's errors: one base, :class:`CatalogError`, under
:class:`~junction.errors.JunctionError`.

Sources never raise while watching (they report errors to their sink and carry on); these
are for settings that cannot work, e.g. :class:`~junction.catalog.consul.ConsulSettingError`
(a Consul address, key, scheme or wait time). aiohttp's and py-consul's errors stay inside
the Consul source, which retries them.
"""

from __future__ import annotations

from junction.errors import JunctionError

__all__ = ["CatalogError"]


class CatalogError(JunctionError):
    """A catalog or config source cannot be set up as asked."""
