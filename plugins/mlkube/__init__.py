"""mlkube: the ML lifecycle as step programs that Airflow, Argo and a local runner all run.

Importing this package is cheap (no mlflow, torch, optuna, hera or kubernetes): DAG files
import it at parse time.
"""

from __future__ import annotations

__version__ = "0.1.0"
