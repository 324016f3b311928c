"""Cron schedules: the check shared by the Argo CronWorkflow and the Airflow retraining DAG.

Light to import (a DAG file calls it at parse time), so a schedule that Argo or Airflow would
reject later is an error when the DAG is parsed or the workflow rendered.
"""

from __future__ import annotations

import re

from mlkube.errors import MlkubeError

# robfig/cron (Argo's parser): the standard five fields, names for months and weekdays.
_FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
           ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP",
                             "OCT", "NOV", "DEC")),
           ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")))
_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_EVERY = re.compile(r"^@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_PART = re.compile(r"^(\*|\?|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/(\d+))?$")


def check_schedule(schedule: str, what: str = "schedule") -> str:
    """A cron expression Argo and Airflow accept, or an error naming ``what`` and the field."""
    text = schedule.strip() if isinstance(schedule, str) else ""
    if text in _DESCRIPTORS or _EVERY.match(text):
        return schedule
    fields = text.split()
    if len(fields) != 5:
        raise MlkubeError(
            f"{what} {schedule!r} is not a cron expression: give five fields "
            "(minute hour day-of-month month day-of-week), e.g. '0 3 * * *', or '@daily'"
        )
    for value, (name, low, high, names) in zip(fields, _FIELDS, strict=True):
        for part in value.split(","):
            if not _part_ok(part, low, high, names):
                raise MlkubeError(
                    f"{what} {schedule!r}: {name} {value!r} is not valid; use numbers "
                    f"{low}-{high}, '*', ranges 'a-b', lists 'a,b' and steps '*/n'"
                )
    return schedule


def _part_ok(part: str, low: int, high: int, names: tuple[str, ...]) -> bool:
    match = _PART.match(part)
    if not match:
        return False
    base, step = match.group(1), match.group(4)
    if step is not None and int(step) < 1:
        return False
    if base in ("*", "?"):
        return True
    bounds = [_number(b, low, names) for b in base.split("-")]
    if any(b is None or not low <= b <= high for b in bounds):
        return False
    return len(bounds) == 1 or bounds[0] <= bounds[1]  # type: ignore[operator]


def _number(text: str, low: int, names: tuple[str, ...]) -> int | None:
    """A field value as a number; names count from the field's lowest value (JAN=1, SUN=0)."""
    if text.isdigit():
        return int(text)
    upper = text.upper()
    return names.index(upper) + low if upper in names else None
