"""The five step programs: ``python -m mlkube.steps.<step>``.

Nothing here imports Airflow, Hera or the Kubernetes client; heavy libraries are imported
when a step runs, not when this package is imported.
"""
