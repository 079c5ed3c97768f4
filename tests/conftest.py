"""Shared fixtures: a small federated Wisconsin split, a real MQTT broker on loopback."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from sim.prep import FederatedData, dirichlet_sites


@pytest.fixture(scope="session")
def wisconsin16() -> FederatedData:
    return dirichlet_sites("breast-cancer", 16, 0.5, 0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not Path(path).exists():
        pytest.fail(f"{name} is not installed: run `make test`, which installs mosquitto")
    return path


@contextlib.contextmanager
def broker(conf: Path, ports: list[int], cwd: Path | None = None) -> Iterator[None]:
    """Run mosquitto with ``conf`` (in ``cwd``, where its relative paths point) until
    every listener in ``ports`` accepts."""
    proc = subprocess.Popen(
        [_binary("mosquitto"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=cwd,
    )
    try:
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), 0.2),
                ):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(f"mosquitto did not start on port {port}: {err.strip()}")
                time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MQTT broker on loopback for the session; ``make test`` installs mosquitto."""
    from sim.consortium import free_ports

    port = free_ports(1)[0]
    conf = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    with broker(conf, [port]):
        yield f"mqtt://127.0.0.1:{port}"


@dataclass(frozen=True)
class SecureBroker:
    """A broker that wants a username and password, on plain MQTT and on TLS."""

    plain_url: str
    tls_url: str
    ca_file: Path
    username: str
    password: str


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it (cryptography)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    later = now + datetime.timedelta(days=1)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("murmur test CA"))
        .issuer_name(name("murmur test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """mosquitto with a password file, on a plain and a TLS listener (CA made here)."""
    from sim.consortium import free_ports

    folder = tmp_path_factory.mktemp("mosquitto-secure")
    ca, cert, key = _certificates(folder)
    passwords = folder / "passwords"
    subprocess.run(
        [_binary("mosquitto_passwd"), "-c", "-b", str(passwords), "site", "s3cret-pw"], check=True
    )
    plain, tls = free_ports(2)
    conf = folder / "mosquitto.conf"
    conf.write_text(
        # Run as us: mosquitto started as root drops to its own user, which cannot read
        # files in pytest's private tmp dirs.
        f"user {getpass.getuser()}\n"
        "per_listener_settings false\nallow_anonymous false\npersistence false\n"
        f"password_file {passwords}\n"
        f"listener {plain} 127.0.0.1\n"
        f"listener {tls} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    )
    with broker(conf, [plain, tls]):
        yield SecureBroker(
            f"mqtt://127.0.0.1:{plain}", f"mqtts://127.0.0.1:{tls}", ca, "site", "s3cret-pw"
        )


def tiny_brats(
    out: Path, *, sites: int = 2, cases: int = 2, naming: str = "2021", seed: int = 3
) -> dict[str, object]:
    """Generated hospitals of ``cases`` small (2 mm) cases each, equal in size: what the
    segmentation tests train and load (``murmur data make-brats``)."""
    from sim.brats.make import make

    return make(
        out,
        sites=sites,
        cases_per_site=cases,
        naming=naming,
        seed=seed,
        resolution=2,
        imbalance=0.0,
        show=False,
    )
