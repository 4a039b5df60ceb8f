"""What the worker and the API share: configuration, database, schema and the rollup."""
