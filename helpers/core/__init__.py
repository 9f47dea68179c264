"""Bottom layer: atomic artifact io and manifests, the item-id codec and id map,
the lazy registry, paths, shared errors. Imports nothing else of helpers."""
