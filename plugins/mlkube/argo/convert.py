"""``kubernetes.client`` models → Hera's models, through their shared JSON form."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from mlkube.kube.serving import to_dict

M = TypeVar("M", bound=BaseModel)


def to_hera(obj: Any, model: type[M]) -> M:
    """``obj`` (a ``kubernetes.client`` model) as an instance of Hera's ``model``."""
    return model.model_validate(to_dict(obj))


def to_hera_list(objs: list[Any], model: type[M]) -> list[M] | None:
    """Each of ``objs`` as ``model``; ``None`` for none (Argo omits empty lists)."""
    return [to_hera(o, model) for o in objs] or None
