"""The API certificate's lifecycle (roles/vllm/tasks/tls.yml, community.crypto on the control node).

Run through test_api_proxy's ``render`` (the role's TLS tasks and the proxy
config on localhost, the head's files under tmp): servekit's CA is made once,
the head's certificate is renewed by the run after it comes within
vllm_api_tls_renew_days of its end (here: forced to expire in one day) and the
run after that changes nothing; a CA and certificate made by the openssl
commands of earlier releases are kept; the served certificate's expiry is
written for node_exporter's textfile collector.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from test_api_proxy import ROOT_ONLY, _free_port, render

pytestmark = ROOT_ONLY


def _fixed() -> dict:
    return {"cluster_api_port": _free_port(), "vllm_backend_port": _free_port(), "cluster_api_tls": True}


def _recap(tmp: Path) -> str:
    return re.search(r"api-head\s*: (ok=.*)", (tmp / "last-run.txt").read_text()).group(1)


def _head_cert(tmp: Path) -> Path:
    (cert,) = (tmp / "control" / "tls").glob("api-head-*.crt")
    return cert


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _reissue_expiring_in(cert_path: Path, ca_dir: Path, days: int) -> x509.Certificate:
    """Replace the head's certificate with the same one (names, key, issuer) that ends in ``days``."""
    old = _load(cert_path)
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.issuer)
               .public_key(old.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=824)).not_valid_after(now + dt.timedelta(days=days)))
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    new = builder.sign(ca_key, hashes.SHA256())
    cert_path.write_bytes(new.public_bytes(serialization.Encoding.PEM))
    return new


@pytest.mark.slow  # the TLS plays three times over (15-26 s): `make test-slow`
def test_a_certificate_expiring_in_a_day_is_renewed_and_the_next_run_changes_nothing(tmp_path):
    fixed = _fixed()
    render(tmp_path, **fixed)
    ca_dir = tmp_path / "control" / "tls"
    ca = (ca_dir / "ca.crt").read_bytes()
    expiring = _reissue_expiring_in(_head_cert(tmp_path), ca_dir, days=1)

    render(tmp_path, "--check", **fixed)
    assert "changed=0" not in _recap(tmp_path), "a dry run reports the renewal it would make"
    assert _load(_head_cert(tmp_path)).serial_number == expiring.serial_number, "and makes none"

    render(tmp_path, **fixed)
    renewed = _load(_head_cert(tmp_path))
    assert "changed=0" not in _recap(tmp_path), "the run after the forced expiry must renew"
    assert renewed.serial_number != expiring.serial_number
    left = renewed.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=824) < left <= dt.timedelta(days=825), left
    assert renewed.public_key() == expiring.public_key(), "renewal keeps the head's key"
    served = (tmp_path / "etc" / "api-tls.crt").read_bytes()
    assert served == _head_cert(tmp_path).read_bytes(), "the renewed certificate is what the head serves"
    assert (ca_dir / "ca.crt").read_bytes() == ca, "renewing the head's certificate keeps the CA"

    render(tmp_path, **fixed)
    assert "changed=0" in _recap(tmp_path), _recap(tmp_path)


@pytest.mark.slow  # the TLS plays three times over (15-26 s): `make test-slow`
def test_a_certificate_outside_the_renewal_window_is_kept(tmp_path):
    fixed = _fixed()
    render(tmp_path, **fixed)
    kept = _reissue_expiring_in(_head_cert(tmp_path), tmp_path / "control" / "tls", days=40)
    render(tmp_path, vllm_api_tls_renew_days=30, **fixed)
    assert _load(_head_cert(tmp_path)).serial_number == kept.serial_number


@pytest.mark.slow  # the TLS plays three times over (15-26 s): `make test-slow`
def test_a_ca_and_certificate_from_the_openssl_tasks_of_earlier_releases_are_kept(tmp_path):
    fixed = _fixed()
    render(tmp_path, **fixed)
    ca_dir, cert = tmp_path / "control" / "tls", _head_cert(tmp_path)
    key = cert.with_suffix(".key")
    names = _load(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    san = ",".join(f"IP:{n.value}" if isinstance(n, x509.IPAddress) else f"DNS:{n.value}" for n in names)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for argv in (
        ["openssl", "req", "-x509", *ec, "-keyout", ca_dir / "ca.key", "-out", ca_dir / "ca.crt",
         "-days", "3650", "-subj", "/CN=servekit API CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["openssl", "req", "-x509", *ec, "-CA", ca_dir / "ca.crt", "-CAkey", ca_dir / "ca.key",
         "-keyout", key, "-out", cert, "-days", "825", "-subj", "/CN=api-head",
         "-addext", f"subjectAltName={san}", "-addext", "basicConstraints=critical,CA:FALSE",
         "-addext", "extendedKeyUsage=serverAuth"]):
        subprocess.run([str(a) for a in argv], check=True, capture_output=True)
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    render(tmp_path, **fixed)
    after = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    assert after == before, "an existing cluster's CA, key and certificate are reused, not re-issued"


def test_a_new_name_gets_a_new_certificate_signed_by_the_same_ca(tmp_path):
    fixed = _fixed()
    render(tmp_path, **fixed)
    first = _head_cert(tmp_path)
    render(tmp_path, cluster_data_address="10.9.9.9", **fixed)
    new = [p for p in (tmp_path / "control" / "tls").glob("api-head-*.crt") if p != first]
    assert len(new) == 1, "a new name is a new certificate file"
    names = _load(new[0]).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.9.9.9" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert _load(new[0]).issuer == _load(first).issuer


def test_a_dry_run_on_a_fresh_control_node_writes_nothing_and_passes(tmp_path):
    render(tmp_path, "--check", **_fixed())
    tls = tmp_path / "control" / "tls"
    assert not (tls.exists() and any(tls.iterdir())), "a dry run makes no key or certificate"
    assert not (tmp_path / "etc" / "api-tls.key").exists()


@pytest.mark.parametrize("own", [False, True], ids=["servekits-ca", "inventory-certificate"])
def test_the_served_certificates_expiry_is_a_textfile_metric(tmp_path, own):
    overrides = _fixed()
    if own:
        pem = tmp_path / "own"
        pem.mkdir()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(pem / "k.pem"),
                        "-out", str(pem / "c.pem"), "-days", "3", "-subj", "/CN=own",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        overrides.update(cluster_api_tls_cert=(pem / "c.pem").read_text(),
                         cluster_api_tls_key=(pem / "k.pem").read_text())
    render(tmp_path, **overrides)
    served = _load(tmp_path / "etc" / "api-tls.crt")
    text = (tmp_path / "textfile" / "servekit-tls.prom").read_text()
    match = re.search(r'^servekit_tls_cert_not_after_seconds\{path="(.+)"\} (\d+)$', text, re.MULTILINE)
    assert match, text
    assert match.group(1) == str(tmp_path / "etc" / "api-tls.crt")
    assert int(match.group(2)) == int(served.not_valid_after_utc.timestamp())
