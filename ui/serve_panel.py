"""The Chat page's Serve panel: serve the chosen model over the OpenAI-compatible API as a background job
(start/stop, URL, curl and Python snippets to copy), and write a deploy bundle for it."""
import json
from pathlib import Path

import streamlit as st

from core import jobs, serve
from core.errors import IrisError

PYTHON = """\
import os
from openai import OpenAI

client = OpenAI(base_url="{url}/v1", api_key={key})
reply = client.chat.completions.create(model="{model}",
                                       messages=[{{"role": "user", "content": "Hello!"}}])
print(reply.choices[0].message.content)"""


def snippets(url: str, model_id: str, auth: bool) -> tuple[str, str]:
    """(curl line, Python snippet) for this server; with a key they read it from $IRIS_API_KEY, never inline."""
    body = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "Hello!"}]})
    header = ' -H "Authorization: Bearer $IRIS_API_KEY"' if auth else ""
    curl = f"curl {url}/v1/chat/completions -H 'Content-Type: application/json'{header} -d '{body}'"
    key = 'os.environ["IRIS_API_KEY"]' if auth else '"unused"'
    return curl, PYTHON.format(url=url, key=key, model=model_id)


@st.fragment(run_every=3)
def serve_panel(model_id: str) -> None:
    """Start/stop an API server for `model_id`, show its URL and snippets, and write a deploy bundle."""
    with st.expander("Serve (OpenAI API)"):
        port = int(st.number_input("Port", 1024, 65535, 8000, key="serve_port"))
        job_dir = serve.job_dir_for(port)
        status = jobs.read_status(job_dir)
        if status.get("state") in jobs.ACTIVE:
            url, served = status.get("url") or f"http://127.0.0.1:{port}", status.get("models") or [model_id]
            st.caption(f"**{status['state']}** · {', '.join(served)} · {'key required' if status.get('auth') else 'no key'}")
            if status["state"] == "running":
                st.markdown(f"API: `{url}/v1` · chat page: [{url}]({url})")
                curl, py = snippets(url, served[0], bool(status.get("auth")))
                st.code(curl, language="bash")
                st.code(py, language="python")
            if st.button("Stop server", key="serve_stop"):
                jobs.request_stop(job_dir)
        else:
            if status.get("error"):
                st.error(status["error"])
            host = st.selectbox("Listen on", ["127.0.0.1", "0.0.0.0"], key="serve_host",
                                help="127.0.0.1: this machine only · 0.0.0.0: every network interface")
            key = st.text_input("API key (optional)", type="password", key="serve_key")
            if st.button("Start server", key="serve_start"):
                st.session_state.pop("serve_refused", None)
                try:
                    serve.launch(serve.ServeConfig(models=[model_id], host=host, port=port), api_key=key or None)
                    st.toast("Starting the API server…")
                except IrisError as err:
                    # kept in the session, not drawn once: in the browser the run that drew it was replaced by
                    # the panel's 3 s redraw, and a refused Start showed nothing at all
                    st.session_state["serve_refused"] = str(err)
            if refused := st.session_state.get("serve_refused"):
                st.error(refused)
        folder = st.text_input("Bundle folder", str(serve.serve_dir() / "bundles" / model_id.replace("/", "_")
                                                     .replace(":", "_")), key="serve_bundle_dir")
        hub_id = st.text_input("Hub repo holding the GGUF (optional)", key="serve_hub_id",
                               help="Leave empty to copy the GGUF into the bundle.")
        if st.button("Deploy bundle", key="serve_bundle"):
            try:  # kept in the session like a refused Start: the 3 s redraw would wipe a message drawn once
                written = serve.write_bundle(model_id, Path(folder), hub_id=hub_id.strip())
                st.session_state["serve_bundle_said"] = ("success", f"Bundle written to {written}")
            except IrisError as err:
                st.session_state["serve_bundle_said"] = ("error", str(err))
        if said := st.session_state.get("serve_bundle_said"):
            (st.success if said[0] == "success" else st.error)(said[1])
