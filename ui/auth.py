"""The password gate every page passes when Iris is shared (`make app HOST=0.0.0.0` with IRIS_PASSWORD).

`gate()` runs first in streamlit_app.py. With a password configured (core.access), a browser session sees
only a sign-in form until it gives the password once; a wrong one waits WRONG_DELAY_S before saying so.
The password travels in a form field (never a URL) and is never logged or kept: only the fact that this
session signed in is. Without a password the app must be on a loopback address, else it shows one sentence.
"""
import time

from core import access

SIGNED_IN = "iris_signed_in"
WRONG_DELAY_S = 1.0  # slows guessing to one try a second per session, unnoticeable to a person


def gate() -> None:
    """Return when this session may use Iris; otherwise draw the sign-in page (or the refusal) and stop."""
    import streamlit as st

    if not access.password_required():
        host = st.get_option("server.address") or "0.0.0.0"  # unset: Streamlit listens on every interface
        if not access.is_loopback(host):
            st.error(f"Iris refuses to serve on {host} without a password: set IRIS_PASSWORD and restart.")
            st.stop()
        return
    if st.session_state.get(SIGNED_IN):
        return
    st.navigation([st.Page(_sign_in, title="Sign in", url_path="sign-in", default=True)], position="hidden").run()
    st.stop()


def _sign_in() -> None:
    import streamlit as st

    st.title("Iris")
    st.caption("This Iris is shared: sign in with the password its owner gave you.")
    with st.form("iris-sign-in"):
        given = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        if access.check_password(given):
            st.session_state[SIGNED_IN] = True
            st.rerun()
        time.sleep(WRONG_DELAY_S)
        st.error("That password is not right: try again.")
