"""Where the deploy step serves a model: one small contract, one module per target.

The deploy step picks a target once (:func:`mlkube.targets.choose`) and runs the same
sequence on each (see :mod:`mlkube.steps.deploy`): the target only knows how to put a version
in front of its published endpoint, and how to put the previous one back.
"""
