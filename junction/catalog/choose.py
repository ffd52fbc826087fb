"""Which config and catalog sources a set of command-line flags names.

Shared by ``junction up|serve`` (:class:`junction.app.Settings`) and
``junction extproc serve``, so the decision service needs nothing of the app layer to
build its sources (the layers point one way: catalog below the services and the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass

from junction.catalog.file import FileCatalog, FileConfig
from junction.catalog.offloop import OffLoopConfig
from junction.catalog.source import CatalogSource, ConfigSource

__all__ = ["SourceChoice"]


@dataclass(frozen=True)
class SourceChoice:
    """A config file or a Consul KV key; an instances file or the Consul catalog."""

    config_path: str | None = None
    instances_path: str | None = None
    consul_addr: str | None = None
    consul_key: str | None = None
    consul_wait: str = "30s"

    def problem(self) -> str | None:
        """What does not fit together (a message naming the flags), or None."""
        if self.consul_key and not self.consul_addr:
            return "--consul-key needs --consul-addr"
        if not self.consul_key and not self.config_path:
            return "give -c CONFIG (a file) or --consul-addr with --consul-key"
        if not self.instances_path and not self.consul_addr:
            return "give --instances FILE or --consul-addr (instances come from the catalog)"
        return None

    def config_source(self) -> ConfigSource:
        """The config document's source; every text it reports is parsed and validated in
        a worker thread, never on the loop that serves xDS and /healthz (OffLoopConfig)."""
        source: ConfigSource
        if self.consul_key:
            from junction.catalog.consul import ConsulConfig  # py-consul only when used

            assert self.consul_addr
            source = ConsulConfig(self.consul_addr, self.consul_key, wait=self.consul_wait)
        else:
            assert self.config_path
            source = FileConfig(self.config_path)
        return OffLoopConfig(source)

    def catalog_source(self) -> CatalogSource:
        if self.instances_path:
            return FileCatalog(self.instances_path)
        from junction.catalog.consul import ConsulCatalog

        assert self.consul_addr
        return ConsulCatalog(self.consul_addr, wait=self.consul_wait)
