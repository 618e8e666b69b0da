"""The docs say what the code does: the troubleshooting page quotes messages
that dask-batch still prints."""

import pathlib
import re

ROOT = pathlib.Path(__file__).parent.parent


def printed_text():
    """The package's source with implicitly joined string literals joined,
    so that a message split over lines reads as one."""
    source = "\n".join(
        path.read_text() for path in sorted((ROOT / "dask_batch").rglob("*.py"))
    )
    return re.sub(r"([\"'])\s*\n\s*f?([\"'])", "", source)


def test_every_message_on_the_troubleshooting_page_is_one_dask_batch_prints():
    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    messages = re.findall(r"```text\n(.*?)\n```", page, flags=re.S)
    assert len(messages) >= 12
    source = printed_text()
    missing = []
    for message in messages:
        # What differs each time is written <...>; the rest is verbatim.
        # Sentences may come from different places in the code.
        for fragment in re.split(r"<[^>]*>|\. ", message):
            fragment = fragment.strip(" .:'\"")
            if len(fragment) >= 8 and fragment not in source:
                missing.append(fragment)
    assert not missing, f"not printed by dask_batch any more: {missing}"


def public_names(package):
    """``__all__`` of a package, read without importing it (jupyter-scheduler
    warns on import)."""
    import ast

    tree = ast.parse((ROOT / package.replace(".", "/") / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(target, "id", None) == "__all__" for target in node.targets
        ):
            return {f"{package}.{name}" for name in ast.literal_eval(node.value)}
    raise AssertionError(f"{package} has no __all__")


def test_the_api_reference_documents_every_public_name():
    page = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^\.\. auto\w+:: ([\w.]+)", page, flags=re.M))
    public = public_names("dask_batch") | public_names("dask_batch.jupyter")
    public.discard("dask_batch.__version__")
    assert len(public) > 25
    assert public - documented == set()
