"""Kubernetes objects for the steps, as typed ``kubernetes.client`` models, and the cluster API.

Both adapters build pods from here: the Airflow operators hand them to KubernetesPodOperator,
the Argo templates convert them to Hera's models. :mod:`mlkube.kube.api` connects to a cluster
and calls it (for the deploy step's cluster targets in :mod:`mlkube.targets`, the multi-node
training Job and preflight); :mod:`mlkube.kube.applied` reads back what mlkube applied, and
:mod:`mlkube.kube.diagnosis` says why a pod does not serve. Nothing here imports the targets.
"""
