"""Why a retraining run trains: the data changed, the served model drifted, or both.

The retraining DAG's gate and the retraining CronWorkflow train, register and deploy when
prepare-data's ``changed`` or the monitor's ``drifted`` is true; the reason is printed and
recorded on the runs that follow (``--reason``, the tag ``mlkube.retrain_reason``). Light: a
DAG file uses it at parse time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DATA_CHANGED = "data changed"
DRIFT = "drift"


def is_true(value: Any) -> bool:
    """A step result's boolean: JSON ``true``, or the text ``"true"`` (Argo, XCom strings)."""
    return value is True or str(value).strip().lower() == "true"


def drift_reason(monitor: Mapping[str, Any]) -> str:
    """``drift: psi <feature>=<value>`` for the feature of highest PSI (and the predictions')."""
    psi = monitor.get("psi") or {}
    parts = []
    if isinstance(psi, Mapping) and psi:
        feature, value = max(psi.items(), key=lambda item: float(item[1]))
        parts.append(f"psi {feature}={float(value):.3f}")
    prediction = monitor.get("prediction_psi")
    if prediction is not None:
        parts.append(f"prediction_psi={float(prediction):.3f}")
    version = monitor.get("champion_version")
    where = f" (v{version})" if version else ""
    return DRIFT + where + (": " + ", ".join(parts) if parts else "")


def reason(changed: Any, monitor: Mapping[str, Any] | None) -> str:
    """Why to retrain, ``""`` when neither the data changed nor the model drifted."""
    reasons = []
    if is_true(changed):
        reasons.append(DATA_CHANGED)
    if monitor is not None and is_true(monitor.get("drifted")):
        reasons.append(drift_reason(monitor))
    return "; ".join(reasons)


def names_drift(reason: str) -> bool:
    """Whether a reason (:func:`reason`'s, or Argo's ``drifted=true``) includes drift."""
    return any(part.strip().startswith(DRIFT) for part in reason.split(";"))
