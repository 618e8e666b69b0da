# %% tags=["parameters"]
upstream = ["total"]
product = None

# %%
from pathlib import Path

total = Path(upstream["total"]).read_text()
Path(product["summary"]).write_text(f"total={total}")
print(f"the total is {total}")
