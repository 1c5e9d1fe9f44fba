#!/usr/bin/env python3
"""Makes test certificates a hostile or broken peer would present (python cryptography).

  mkcert.py ca OUTDIR                        a throwaway self-signed root (ca.pem, ca.key)
  mkcert.py leaf CADIR URI OUTPREFIX [--expired]
                                             a P-256 leaf with URI SAN, signed by CADIR's
                                             ca.pem/ca.key (weft's or a throwaway root);
                                             writes OUTPREFIX.pem (leaf + CADIR/ca.pem +
                                             CADIR/chain.pem if present) and OUTPREFIX.key
"""
import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write_key(path, key):
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def main():
    now = datetime.datetime.now(datetime.timezone.utc)
    if sys.argv[1] == "ca":
        out = sys.argv[2]
        os.makedirs(out, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "not the mesh")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                .sign(key, hashes.SHA256()))
        open(os.path.join(out, "ca.pem"), "wb").write(cert.public_bytes(serialization.Encoding.PEM))
        write_key(os.path.join(out, "ca.key"), key)
        return
    cadir, uri, prefix = sys.argv[2], sys.argv[3], sys.argv[4]
    expired = "--expired" in sys.argv
    ca_pem = open(os.path.join(cadir, "ca.pem"), "rb").read()
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(open(os.path.join(cadir, "ca.key"), "rb").read(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = (now - datetime.timedelta(hours=2), now - datetime.timedelta(hours=1)) if expired \
        else (now - datetime.timedelta(minutes=5), now + datetime.timedelta(hours=1))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_pem
    if os.path.exists(os.path.join(cadir, "chain.pem")):
        chain += open(os.path.join(cadir, "chain.pem"), "rb").read()
    open(prefix + ".pem", "wb").write(chain)
    write_key(prefix + ".key", key)


if __name__ == "__main__":
    main()
