"""Kubernetes objects for the steps, as typed ``kubernetes.client`` models, and the rollout.

Both adapters build pods from here: the Airflow operators hand them to KubernetesPodOperator,
the Argo templates convert them to Hera's models. Only :mod:`mlkube.kube.rollout` talks to a
cluster, and only the deploy step uses it.
"""
