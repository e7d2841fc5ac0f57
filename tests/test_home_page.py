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
    assert "v1" in at.dataframe[0].value["version"].tolist()
