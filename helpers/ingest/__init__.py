"""BSON dump -> catalogue: the streaming reader (bson_store, framing, ranges, image_store),
JPEG checks (jpeg), the catalogue pass (scan, built from products, checkpoint, categories,
export, errors, schema), the built-in sample. Imports helpers.core only."""
