"""Visual product search on the Cdiscount catalogue.

Data flows one way, each stage a file you can open on its own:
BSON -> catalogue (Parquet) -> vector store -> index -> gallery / app.
See the README's Architecture section for the map.

Imports nothing: each layer is imported where it is used.
"""

__version__ = "0.1.0"
