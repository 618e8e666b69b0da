"""Submit a batch job to the embedded local gateway, exit, and fetch it later.

JOB=$(python examples/quickstart.py)       # submits, prints the id, exits
python examples/quickstart.py "$JOB"       # a new process waits for the result
"""

import sys

from dask_batch import BatchClient


def main(n):
    """Runs beside the job's scheduler; the cluster is its default client."""
    import dask.bag as db

    print(f"summing the squares of 0..{n - 1} on the job's workers")
    return (
        db.from_sequence(range(n), npartitions=4).map(lambda x: x * x).sum().compute()
    )


if __name__ == "__main__":
    with BatchClient() as batch:
        if len(sys.argv) == 1:
            job = batch.submit(main, 1000, name="quickstart", workers=2)
            print(job.id)
        else:
            job_id = sys.argv[1]
            print("result:", batch.result(job_id, timeout=300))
            print("state: ", batch.status(job_id).state)
            print("log:   ", batch.logs(job_id).strip())
