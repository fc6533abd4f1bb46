"""The management side of the gateway: what ``/admin`` routes call, as ``/v1`` routes call
``gateway/serving/``. Each service is built once by the app factory, kept on ``app.state`` and
handed to routes through the aliases in ``gateway/deps.py``.

- ``models.ModelManagement``: the model store (upload, import, download, aliases, deletes).
- ``requests.RequestRecords``: pages of the request records.

Deployments are managed by the deployment manager itself (``protocol.deploy.DeploymentControl``)
and classifiers are trained by ``gateway.serving.classifiers.ClassifierTrainer``.
"""
