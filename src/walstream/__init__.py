"""The service: change capture from the WAL, change buffers, catalog, CLI."""
