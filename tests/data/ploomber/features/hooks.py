from pathlib import Path


def fit_done(product):
    if not Path(str(product)).is_file():
        raise RuntimeError(f"{product} was not made")
