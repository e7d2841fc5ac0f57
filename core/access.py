"""Who may use Iris: local by default, a password when shared, hub pushes only to the owner's namespaces.

Run as:
    python -m core.access check-host HOST     exit 2 with one sentence if HOST is not loopback and no password
                                              is set (`make app HOST=0.0.0.0` calls this before Streamlit)
    python -m core.access set-password        read a password (no echo) and store its scrypt hash in
                                              IRIS_HOME/access.yaml (so it is in no environment or shell history)

The password is `IRIS_PASSWORD`, else `password_hash` in IRIS_HOME/access.yaml. Checks compare digests with
`hmac.compare_digest` (constant time); nothing here prints or logs a password or a token. The Streamlit gate
(`ui/auth.py`) and the API server (`core.serve`, its `--api-key`) build on these functions.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import sys

import yaml

from core.errors import IrisError, cli_exit
from core.paths import iris_home, write_text

ACCESS_FILE = "access.yaml"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}
# scrypt cost: 2^14 × 8 × 1 takes ~50 ms and 16 MB here; enough to make a stolen hash slow to guess.
SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def is_loopback(host: str) -> bool:
    host = (host or "").strip().strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$<salt hex>$<digest hex>` (the format stored in access.yaml)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def stored_hash() -> str | None:
    path = iris_home() / ACCESS_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    value = data.get("password_hash") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value.startswith("scrypt$") else None


def password_required() -> bool:
    return bool(os.environ.get("IRIS_PASSWORD")) or stored_hash() is not None


def check_password(given: str) -> bool:
    """True when `given` is the configured password; both sides are hashed, then compared in constant time."""
    given = given or ""
    env = os.environ.get("IRIS_PASSWORD")
    if env:
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(env.encode()).digest())
    stored = stored_hash()
    if stored is None:
        return False
    _, salt, _ = stored.split("$", 2)
    return hmac.compare_digest(hash_password(given, bytes.fromhex(salt)).encode(), stored.encode())


def require_password_for(host: str) -> None:
    """Refuse to serve on a non-loopback address without a password (the app and the API server)."""
    if not is_loopback(host) and not password_required():
        raise IrisError(f"refusing to listen on {host} without a password: set IRIS_PASSWORD (or run "
                        "`python -m core.access set-password`), or leave HOST at 127.0.0.1 for this machine only.")


def save_password(password: str) -> None:
    if len(password) < 8:
        raise IrisError("the password has fewer than 8 characters: choose a longer one.")
    write_text(iris_home() / ACCESS_FILE, yaml.safe_dump({"password_hash": hash_password(password)}))
    os.chmod(iris_home() / ACCESS_FILE, 0o600)


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def allowed_hub_namespaces(token: str | None = None) -> list[str]:
    """IRIS_HUB_NAMESPACES (comma-separated), else the token's own user (asked of the hub: needs network)."""
    listed = [n.strip() for n in os.environ.get("IRIS_HUB_NAMESPACES", "").split(",") if n.strip()]
    if listed:
        return listed
    token = token or hub_token()
    if not token:
        return []
    try:
        from huggingface_hub import HfApi

        return [HfApi(token=token).whoami()["name"]]
    except Exception:  # offline: nothing can be confirmed, so nothing is allowed
        return []


def check_hub_repo(repo: str, what: str = "push_repo", token: str | None = None) -> str:
    """Refuse a hub repo outside the allowed namespaces, in one sentence that never shows the token."""
    namespace = repo.split("/", 1)[0] if "/" in repo else ""
    allowed = allowed_hub_namespaces(token)
    if namespace not in allowed:
        where = ", ".join(allowed) if allowed else "none (set IRIS_HUB_NAMESPACES, or HF_TOKEN while online)"
        raise IrisError(f"`{what}` {repo!r} is outside the hub namespaces this Iris may push to: {where}; "
                        "the owner lists more in IRIS_HUB_NAMESPACES.")
    return repo


def main(argv: list[str] | None = None) -> None:
    import argparse
    import getpass

    parser = argparse.ArgumentParser(prog="python -m core.access", description="Iris access checks.")
    sub = parser.add_subparsers(dest="command", required=True)
    host = sub.add_parser("check-host", help="exit 2 unless HOST is loopback or a password is set")
    host.add_argument("host")
    sub.add_parser("set-password", help="store a hashed password in IRIS_HOME/access.yaml")
    args = parser.parse_args(argv)
    try:
        if args.command == "check-host":
            require_password_for(args.host)
        else:
            first = getpass.getpass("New Iris password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
            save_password(first)
            print(f"saved a hashed password in {iris_home() / ACCESS_FILE}")
    except IrisError as err:
        cli_exit(err)


if __name__ == "__main__":
    main()
