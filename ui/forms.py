"""Form widgets driven by core's tables (the recipe step table's Field: widget kind, label, help)."""
from typing import Any


def field_input(col, f, value: Any, key: str, fallback_lines: list[str] | None = None) -> Any:
    """One recipe parameter as the widget its Field names: a number, a comma list or one item per line."""
    if f.widget == "int":
        return int(col.number_input(f.label, value=int(value), step=1, key=key, help=f.help))
    if f.widget == "float":
        return float(col.number_input(f.label, value=float(value), step=0.05, key=key, help=f.help))
    if f.widget == "list":
        text = col.text_input(f.label, ", ".join(value or []), key=key, help=f.help)
        return [t.strip() for t in text.split(",") if t.strip()]
    text = col.text_area(f.label, "\n".join(value or fallback_lines or []), key=key, help=f.help)
    return [t for t in text.splitlines() if t.strip()]


def recipe_step_inputs(st, recipe, fallback_lines: list[str] | None = None) -> list[dict]:
    """A row per step of `recipe`: its on/off toggle (key on_<kind>) and a widget per parameter its Field shows
    (key <kind>.<name>); returns the steps as DataRecipe takes them."""
    from core.data.filters import STEP_TABLE

    steps = []
    for step in recipe.steps:
        kind = STEP_TABLE[step.kind]
        fields = {n: f for n, f in kind.fields.items() if f.widget}
        cols = st.columns([1.3] + [1] * max(1, len(fields)))
        on = cols[0].toggle(kind.label, value=step.enabled, key=f"on_{step.kind}", help=kind.help)
        params = {name: field_input(col, f, step.params[name], f"{step.kind}.{name}", fallback_lines)
                  for col, (name, f) in zip(cols[1:], fields.items())}
        steps.append({"kind": step.kind, "enabled": on, "params": params})
    return steps


def decoding_inputs(st, base) -> dict:
    """Sliders and numbers for every DecodingSettings field, starting from `base` (a preset)."""
    return dict(temperature=st.slider("temperature", 0.0, 2.0, base.temperature, 0.05),
                top_p=st.slider("top_p", 0.05, 1.0, base.top_p, 0.05),
                top_k=st.number_input("top_k (0 = off)", 0, 500, base.top_k),
                repeat_penalty=st.slider("repeat penalty", 1.0, 2.0, base.repeat_penalty, 0.05),
                max_new_tokens=st.number_input("max new tokens", 1, 4096, base.max_new_tokens),
                seed=st.number_input("seed", 0, 2**31 - 1, base.seed))
