import json
from pathlib import Path


def serialize(obj, product):
    Path(str(product)).write_text(json.dumps(obj))


def unserialize(product):
    return json.loads(Path(str(product)).read_text())
