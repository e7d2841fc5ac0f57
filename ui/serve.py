"""Start the Iris app: `streamlit run streamlit_app.py` whose page URLs work from the very first request.

Run as: python -m ui.serve [streamlit options, e.g. --server.port 8600]   (`make app` does this)

Streamlit 1.67 treats an app whose folder holds `pages/` as an old-style (v1) multipage app until the
entry script has called `st.navigation` once in that server: a first request for /data then runs
pages/data.py alone, with the folder's file names as the sidebar, for that whole browser session.
Iris routes only through `st.navigation` (streamlit_app.py), so the v1 mode is switched off before
the server starts (`PagesManager.uses_pages_directory`, read once per server in pages_manager.py).
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli

    from core.paths import REPO_ROOT

    PagesManager.uses_pages_directory = False  # st.navigation sets the same on its first call
    sys.argv = ["streamlit", "run", str(REPO_ROOT / "streamlit_app.py"), *argv]
    cli.main()


if __name__ == "__main__":
    main(sys.argv[1:])
