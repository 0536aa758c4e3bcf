"""``adamix-serve --ray``: the server as a Ray Serve application. Only `batching`, `deployment` and `server`
import ray (absolute imports: ``import ray`` in these modules is the real Ray, never this package); `options`
does not, so the command checks its options without it."""
