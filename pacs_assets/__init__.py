"""pacs_assets: hospital NAS devices -> DuckDB index -> Orthanc PACS, as Dagster asset graphs."""


def __getattr__(name: str):
    # `defs` is built from the site configuration only when Dagster asks for it, so that the `pacs`
    # CLI (e.g. `pacs sample`) works before any configuration exists.
    if name == "defs":
        from pacs_assets.definitions import defs

        return defs
    raise AttributeError(name)
