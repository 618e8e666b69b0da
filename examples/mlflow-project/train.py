"""MLflow's classic example (mlflow/mlflow-example), as a dask-batch job.

An ElasticNet on scikit-learn's diabetes data (bundled with scikit-learn, so
nothing is downloaded), cross-validated on the job's Dask workers. Run it
with ``mlflow run . -b dask-batch -P alpha=5.0`` (see README.md).
"""

import pickle
import sys

import joblib
import mlflow
import numpy as np
from distributed import Client
from sklearn.datasets import load_diabetes
from sklearn.linear_model import ElasticNet
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import cross_val_score, train_test_split

import dask_batch

alpha = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
l1_ratio = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1

# In a dask-batch job, Client() connects to the job's own cluster; run
# elsewhere, it starts a local one.
client = Client()
X, y = load_diabetes(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=42)

# The run `mlflow run` made (MLFLOW_RUN_ID), which holds the parameters.
with mlflow.start_run():
    model = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, random_state=42)
    with joblib.parallel_backend("dask"):
        cv_r2 = cross_val_score(model, X_train, y_train, cv=5, scoring="r2")
    dask_batch.report(0.5, "cross-validated")
    model.fit(X_train, y_train)
    predicted = model.predict(X_test)
    rmse = float(np.sqrt(mean_squared_error(y_test, predicted)))
    mae = float(mean_absolute_error(y_test, predicted))
    r2 = float(r2_score(y_test, predicted))
    print(f"Elasticnet model (alpha={alpha:f}, l1_ratio={l1_ratio:f}):")
    print(f"  RMSE: {rmse}\n  MAE: {mae}\n  R2: {r2}\n  CV R2: {cv_r2.mean()}")
    mlflow.log_metrics({"rmse": rmse, "mae": mae, "r2": r2, "cv_r2": cv_r2.mean()})
    # A local path that becomes one of the job's artifacts (and the run's).
    path = (
        dask_batch.artifacts_dir("model.pkl")
        if dask_batch.current_job()
        else "model.pkl"
    )
    with open(path, "wb") as f:
        pickle.dump(model, f)
    dask_batch.report(1.0, "done")
client.close()
