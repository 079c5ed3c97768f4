"""The consortium's MQTT broker: a mosquitto config with one login per site and ACLs.

Telemetry is operational data, but a site must still not be able to speak for another:
a site that could publish under a neighbour's peer ID could make the consortium's
dashboard show that neighbour stalled, or hide its own misbehaviour. So the broker the
coordinator runs (``murmur consortium init --mqtt URL``) has

- no anonymous access;
- one user per site, whose password is drawn from the OS CSPRNG and written to that
  site's folder as ``mqtt.password`` (0600), and who may **write** only under
  ``<prefix>/<its peer ID>/#``, read nothing;
- one ``watch`` user (``broker/watch.password``) who may only **read** ``<prefix>/#``,
  for ``murmur watch`` and dashboards.

The password file holds mosquitto's own PBKDF2-SHA512 hashes (``$7$``, what
``mosquitto_passwd`` writes), computed here so the coordinator needs no mosquitto tools.
``add-site`` and ``remove-site`` keep the files in step: a new site gets a new login, a
removed one loses its login, and every other password stays as it was.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Sequence
from pathlib import Path

from crypto.keyfile import write_secret
from murmur.files import atomic_write
from node.config import TelemetrySection, parse_broker
from node.errors import ConfigError

FOLDER = "broker"
WATCH_USER = "watch"
SITE_PASSWORD = "mqtt.password"  # in each site's folder
PBKDF2_ITERATIONS = 101  # mosquitto 2's own default for $7$ hashes
SALT_BYTES = 12


def password_hash(password: str, salt: bytes | None = None) -> str:
    """A mosquitto ``$7$`` password-file hash (PBKDF2-HMAC-SHA512)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def site_telemetry(url: str, name: str, prefix: str = "murmur") -> TelemetrySection:
    """A site's ``[telemetry]`` for the consortium broker: its own login."""
    parse_broker(url)
    return TelemetrySection(
        mqtt=url, topic=prefix, username=name, password_file=Path(SITE_PASSWORD)
    )


def acl(sites: Sequence[tuple[str, str]], prefix: str) -> str:
    """The ACL file: each site writes only under its own peer ID; ``watch`` only reads."""
    lines = [
        "# murmur: written by `murmur consortium`; each site publishes only under its own",
        "# peer ID and reads nothing; the watch user reads everything and publishes nothing.",
        "",
        f"user {WATCH_USER}",
        f"topic read {prefix}/#",
    ]
    for name, peer_id in sites:
        lines += ["", f"user {name}", f"topic write {prefix}/{peer_id}/#"]
    return "\n".join(lines) + "\n"


def config_text(url: str) -> str:
    """``mosquitto.conf``: the listener of ``url``, logins and ACLs from this folder."""
    _host, port, tls = parse_broker(url)
    tls_lines = (
        [
            "# mqtts: the broker's certificate and key (signed by the CA the sites trust)",
            "certfile server.crt",
            "keyfile server.key",
        ]
        if tls
        else ["# plain MQTT: for a network the consortium trusts; use mqtts:// otherwise"]
    )
    return "\n".join(
        [
            "# murmur consortium broker: run `mosquitto -c mosquitto.conf` in this folder.",
            f"listener {port}",
            *tls_lines,
            "allow_anonymous false",
            "password_file passwords",
            "acl_file acl",
            "persistence false",
            "",
        ]
    )


def write(
    out: Path, sites: Sequence[tuple[str, str]], url: str, prefix: str = "murmur"
) -> list[Path]:
    """Create or bring up to date ``out/broker/`` and each site's ``mqtt.password``.

    ``sites``: (name, peer ID) of every member, in order; each site's folder is
    ``out/<name>``. Existing logins are kept; returns the password files written anew."""
    parse_broker(url)
    if set("#+/") & set(prefix) or not prefix:
        raise ConfigError(f"MQTT topic prefix {prefix!r}: one topic level without wildcards")
    folder = out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    hashes = _read_hashes(folder / "passwords")
    written = []
    for name, secret_path in [
        (WATCH_USER, folder / "watch.password"),
        *((n, out / n / SITE_PASSWORD) for n, _ in sites),
    ]:
        if name in hashes and secret_path.exists():
            continue
        password = secrets.token_urlsafe(24)
        secret_path.parent.mkdir(parents=True, exist_ok=True)
        write_secret(secret_path, password.encode() + b"\n", overwrite=True, what="password")
        hashes[name] = password_hash(password)
        written.append(secret_path)
    members = {WATCH_USER, *(n for n, _ in sites)}
    lines = "".join(f"{n}:{h}\n" for n, h in hashes.items() if n in members)
    atomic_write(folder / "passwords", lines.encode(), mode=0o600)
    atomic_write(folder / "acl", acl(sites, prefix).encode())
    atomic_write(folder / "mosquitto.conf", config_text(url).encode())
    return written


def _read_hashes(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    hashes = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition(":")
        if sep and name:
            hashes[name] = value
    return hashes
