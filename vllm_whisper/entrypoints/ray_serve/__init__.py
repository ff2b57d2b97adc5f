"""The OpenAI server scaled out on Ray Serve: replicas of the same FastAPI app, one engine each, behind Serve's
proxy. Only `app`, `deployment`, `launch` and `metrics_export` import ray (the optional `ray` extra); `options`,
`proxy_errors` and `replica_header` do not, so the single server's flags and imports work without it."""
