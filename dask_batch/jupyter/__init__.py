"""JupyterLab's Notebook Jobs (jupyter-scheduler) on dask-batch.

Enable with three lines of Jupyter server config (``pip install
'dask-batch[jupyter]'`` installs them as ``jupyter_server_config.d``)::

    c.SchedulerApp.scheduler_class = "dask_batch.jupyter.DaskBatchScheduler"
    c.SchedulerApp.environment_manager_class = "dask_batch.jupyter.GatewayEnvironments"
    c.SchedulerApp.job_files_manager_class = "dask_batch.jupyter.ArtifactFiles"

A notebook job made in JupyterLab is a dask-batch notebook job, and a job
definition a dask-batch schedule: they run on the gateway and are kept in the
job storage, so they outlive the user's server. Runs in the Jupyter server's
process, a front on the public job service.
"""

from dask_batch.jupyter.environments import GatewayEnvironments
from dask_batch.jupyter.files import ArtifactFiles
from dask_batch.jupyter.scheduler import DaskBatchScheduler

__all__ = ["ArtifactFiles", "DaskBatchScheduler", "GatewayEnvironments"]
