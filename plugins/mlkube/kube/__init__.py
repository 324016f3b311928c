"""Kubernetes objects for the steps, as typed ``kubernetes.client`` models.

Both adapters build from here: the Airflow operators hand these to KubernetesPodOperator, the
Argo templates convert them to Hera's models. Nothing here talks to a cluster.
"""
