"""Running innspect's data-set work on several workers (Ray) and writing sharded outputs:
``explain_dataset`` (every sample, every method, resumable shards), Ray actors that build
the model from a spec, statistics reduced in a tree. Knows analyzers, not patterns or
introspection (their Ray glue lives with them). The local backend needs no Ray."""
