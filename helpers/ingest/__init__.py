"""BSON dump -> catalogue: the streaming reader, JPEG checks, the catalogue
scan, the built-in sample. Imports helpers.core only."""
