"""mlkube's model-serving runtime: MLflow models over the Open Inference Protocol (V2), REST.

- ``loaded``: load an MLflow model, verify it on its own input example (``LoadedModel``).
- ``app``: the Starlette ASGI app: V2 health, metadata, infer and model-repository endpoints,
  MLflow's ``/invocations`` and ``/ping``, Prometheus ``/metrics``; one slot per model name,
  hot-swapped atomically.
- ``server``: ``mlkube serve model``: uvicorn, one worker, in the foreground.
- ``client``: a small stdlib client (the deploy step, the demo).

Nothing here is imported by the DAG files; ``client`` imports only the standard library.
"""
