"""The catalogue: the Catalogue protocol and Product, Parquet and MongoDB
catalogues, and ImageSource (a product's pictures).
Imports helpers.core and helpers.ingest."""
