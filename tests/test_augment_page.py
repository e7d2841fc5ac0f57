"""Augment page driven with AppTest: pick a version + generators, preview the mixture, save; bad shares."""
import pandas as pd
from streamlit.testing.v1 import AppTest

from core import versions
from core.data import augment
from core.data.generate import GeneratorSpec

PAGE = "../pages/augment.py"


def _base_version(n: int = 12) -> None:
    rows = [[{"role": "user", "content": f"Tell me fact number {i} about the {w} river delta and its birds."},
             {"role": "assistant", "content": f"Fact {i}: the {w} delta hosts many herons."}]
            for i, w in enumerate(["amber", "basalt", "cedar", "dune", "ember", "fjord", "garnet", "heath",
                                   "indigo", "jade", "kelp", "lichen"][:n])]
    versions.save("base", pd.DataFrame({"messages": rows}))


def _pick(at: AppTest) -> AppTest:
    at.multiselect(key="versions").set_value(["base"])
    at.checkbox(key="use_sample").set_value(False)
    at.multiselect(key="generators").set_value(["gcd", "human_eval"]).run()
    at.number_input(key="count_gcd").set_value(6)
    at.number_input(key="count_human_eval").set_value(2)
    return at.run()


def test_page_previews_and_saves_a_mixture_by_share():
    _base_version()
    at = _pick(AppTest.from_file(PAGE, default_timeout=180).run())
    assert not at.exception
    at.radio(key="mode").set_value("share of the mixture").run()
    at.number_input(key="share_base").set_value(0.75)
    at.number_input(key="share_generated").set_value(0.25)
    at.number_input(key="total").set_value(8)
    at.button(key="preview").click().run()
    assert not at.exception and not at.error
    mix = at.dataframe[0].value.set_index("origin")  # the mixture table comes first
    assert mix["rows"].to_dict() == {"base": 6, "generated": 2}
    assert len(at.get("plotly_chart")) == 2
    at.text_input(key="name").set_value("base-plus-gcd").run()
    at.button(key="save").click().run()
    assert "Saved **base-plus-gcd** (8 train / 0 eval rows)" in at.success[0].value
    manifest = versions.load_manifest("base-plus-gcd")
    assert manifest["kind"] == "augment" and manifest["parent"]["versions"] == ["base"]
    assert versions.load("base-plus-gcd")["origin"].value_counts().to_dict() == {"base": 6, "generated": 2}


def test_page_shows_one_error_for_shares_that_do_not_add_up():
    _base_version()
    at = _pick(AppTest.from_file(PAGE, default_timeout=180).run())
    at.radio(key="mode").set_value("share of the mixture").run()
    at.number_input(key="share_base").set_value(0.5)
    at.number_input(key="share_generated").set_value(0.2).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["the sources' `share` values add up to 0.7, not 1: base 0.5, generated 0.2."]
    assert len(at.button) == 0  # nothing to preview or save until the shares are fixed
    assert [m["name"] for m in versions.list_versions()] == ["base"]


def test_augmented_version_can_be_picked_on_the_train_page():
    _base_version()
    recipe = augment.AugmentRecipe(sources=[
        augment.SourceSpec(name="base", kind="version", version="base"),
        augment.SourceSpec(name="math", kind="generated", seed=0,
                           generators=[GeneratorSpec("gsm_symbolic", 3), GeneratorSpec("gcd", 3)])])
    augment.main(recipe, "base-plus-math")
    at = AppTest.from_file("../pages/train.py", default_timeout=180).run()
    assert not at.exception
    picker = next(s for s in at.selectbox if s.label == "Dataset version")
    assert "base-plus-math" in picker.options
    picker.set_value("base-plus-math").run()
    assert not at.exception and not at.error


def test_share_mode_with_total_zero_says_what_the_shares_resolve_to():
    _base_version()
    at = _pick(AppTest.from_file(PAGE, default_timeout=180).run())
    at.radio(key="mode").set_value("share of the mixture").run()
    at.number_input(key="share_base").set_value(0.5)
    at.number_input(key="share_generated").set_value(0.5)
    at.button(key="preview").click().run()  # Total rows stays 0: the largest mixture without repeats
    assert not at.exception and not at.error
    said = " ".join(i.value for i in at.info)
    assert "base: 8 of 12 rows (share 0.5)" in said and "generated: 8 of 8 rows (share 0.5)" in said
    assert "generated's 8 rows at share 0.5 limit it" in said


def test_save_is_never_disabled_an_empty_name_says_so_and_a_taken_one_is_refused_at_once():
    """A user types a name and clicks Save straight away: the click must count. With Save disabled until the
    name arrived, the click that also committed the name was lost and nothing was saved."""
    _base_version()
    at = _pick(AppTest.from_file(PAGE, default_timeout=180).run())
    at.button(key="preview").click().run()
    assert not at.exception and not at.error
    assert not at.button(key="save").disabled
    at.button(key="save").click().run()
    assert [e.value for e in at.error] == ["the new version needs a name: type one above, e.g. finetome-plus-math."]
    at.text_input(key="name").set_value("base").run()
    assert [e.value for e in at.error] == [
        "dataset version 'base' already exists (versions are immutable): choose another name."]
    at.text_input(key="name").set_value("base-mix")
    at.button(key="save").click().run()  # the name and the click in one rerun, as the browser sends them
    assert not at.error and "Saved **base-mix**" in at.success[0].value
    assert sorted(m["name"] for m in versions.list_versions()) == ["base", "base-mix"]
