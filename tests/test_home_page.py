"""The app routes to every page and Home shows the workspace's lineage."""
from streamlit.testing.v1 import AppTest

from core import versions


def test_home_renders_empty_workspace():
    at = AppTest.from_file("../streamlit_app.py", default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Iris"
    assert any("Nothing yet" in i.value for i in at.info)


def test_home_shows_dataset_lineage():
    import pandas as pd

    rows = pd.DataFrame({"messages": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]})
    versions.save("v1", rows, parent={"source": "bundled:finetome_sample"}, recipe={"source": "sample"})
    at = AppTest.from_file("../streamlit_app.py", default_timeout=60).run()
    assert not at.exception
    assert [m.value for m in at.metric][0] == "1"
    assert any("[v1](/data?version=v1)" in m.value for m in at.markdown)


def test_lineage_from_column_names_and_links_the_parents():
    import pandas as pd

    rows = pd.DataFrame({"messages": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]})
    versions.save("v1", rows, parent={"source": "bundled:finetome_sample.jsonl"})
    versions.save("v2", rows, parent={"version": "v1", "content_hash": "abc"})
    versions.save("mix", rows, parent={"versions": ["v1", "v2"], "files": [], "hub": [],
                                       "generated": [{"source": "generated", "seed": 0, "generators": []}]})
    at = AppTest.from_file("../streamlit_app.py", default_timeout=60).run()
    assert not at.exception
    table = next(m.value for m in at.markdown if "| version | kind | from |" in m.value)
    assert "{" not in table  # no raw JSON
    assert "| [v2](/data?version=v2) | " in table and "| [v1](/data?version=v1) |" in table
    assert "[v1](/data?version=v1), [v2](/data?version=v2), generated (generated)" in table
    assert "bundled:finetome_sample.jsonl (source)" in table


def test_lineage_draws_an_augment_mixture_of_a_file_and_generated_rows():
    """Walked: Augment saved the bundled sample + gcd rows as a version; Home listed it under Dataset versions but
    the Lineage said "Nothing yet" (its parents are files and generated rows, which drew no edge)."""
    import pandas as pd

    rows = pd.DataFrame({"messages": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]})
    versions.save("mix", rows, kind="augment", parent={
        "versions": [], "files": ["/somewhere/uploads/my.jsonl"], "hub": ["org/data"],
        "generated": [{"source": "generated", "seed": 0, "generators": [{"name": "gcd", "count": 5}]}]})
    at = AppTest.from_file("../streamlit_app.py", default_timeout=60).run()
    assert not at.exception
    assert not any("Nothing yet" in i.value for i in at.info)
    [chart] = at.get("graphviz_chart")
    for parent in ("file:my.jsonl", "hub:org/data", "generated:generated"):
        assert f'"{parent}" -> "dataset:mix";' in chart.proto.spec


def test_a_version_link_opens_it_on_the_data_page():
    import pandas as pd

    rows = pd.DataFrame({"messages": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]})
    versions.save("v1", rows, parent={"source": "x"})
    at = AppTest.from_file("../pages/data.py", default_timeout=120)
    at.query_params["version"] = "v1"
    at.run()
    assert not at.exception and any(c.value.startswith("1 rows from v1") for c in at.caption)
