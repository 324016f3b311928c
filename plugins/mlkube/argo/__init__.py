"""Argo Workflows adapter: the steps as reusable templates, the lifecycle DAG, retraining.

Built with Hera from the same step descriptions (:mod:`mlkube.spec`) and pod pieces
(:mod:`mlkube.kube.pod`) the Airflow operators use. One module per concept:

- :mod:`~mlkube.argo.options`: what a render can be told (validated, with defaults)
- :mod:`~mlkube.argo.io`: a step's input and output parameters, derived from its spec
- :mod:`~mlkube.argo.templates`: the ``mlkube-steps`` WorkflowTemplate, one template per step
- :mod:`~mlkube.argo.lifecycle`: the ``mlkube-lifecycle`` DAG and a Workflow that runs it
- :mod:`~mlkube.argo.cron`: the ``mlkube-retrain`` CronWorkflow and the schedule check
- :mod:`~mlkube.argo.rbac`: the workflow and deploy accounts (:mod:`mlkube.kube.rbac`) a
  render names
- :mod:`~mlkube.argo.render`: every object as YAML, written to or compared with workflows/
  (by :mod:`mlkube.rendered`, which ``mlkube platform render`` shares)
- :mod:`~mlkube.argo.schema`: strict offline validation (Argo JSON schema, KServe CRD)
- :mod:`~mlkube.argo.submit`: submission to an Argo Server through Hera's client

Importing this package is cheap; the modules import Hera themselves.
"""
