"""The Ray executor: the runtime (started once per process, loopback-only), placement and batch
plans, the actor pool, model bytes through the object store, and the executor that schedules
batches on it."""
