from dask_batch.ui import main

main()
