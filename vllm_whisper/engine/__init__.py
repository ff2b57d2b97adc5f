"""The batched engine: requests, KV pools, scheduler, model runner, sampler and the step loop."""
