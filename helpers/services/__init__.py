"""Starting local servers (Elasticsearch, mongod) for tests, demos and users."""
