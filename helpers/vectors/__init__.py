"""Vector stores (single and sharded) and the embedding pipeline that fills them.
Imports core, catalogue and models."""
