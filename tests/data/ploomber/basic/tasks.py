from pathlib import Path


def numbers(product, count):
    Path(str(product)).write_text("\n".join(str(i) for i in range(int(count))))


def total(upstream, product):
    values = [int(line) for line in Path(str(upstream["numbers"])).read_text().split()]
    Path(str(product)).write_text(str(sum(values)))
