"""A throwaway MIT Kerberos realm for the GSSAPI tests (not a test module).

``KerberosRealm.create(directory)`` makes a realm whose every file lives in
``directory``: its own krb5.conf and kdc.conf (through KRB5_CONFIG and
KRB5_KDC_PROFILE, so nothing in /etc is read or touched), a database made by
``kdb5_util``, principals and keytabs made by ``kadmin.local``, and a
``krb5kdc`` listening on 127.0.0.1 only, on a port found free.  ``close()``
stops the KDC.  The programs come from Debian's krb5-kdc, krb5-admin-server
and krb5-user packages (tests/run.sh installs them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from procs import terminate

__all__ = ["KerberosRealm", "REALM", "SERVICE", "DANTE_SERVICE", "OTHER_SERVICE"]

REALM = "FASTSOCKS.TEST"
#: The SOCKS service: Dante's client asks for "rcmd" at the proxy's host by
#: default (socks.conf's gssapi.servicename), and so do the tests' clients.
SERVICE = "rcmd/127.0.0.1"
#: What Dante's client asks for when its proxy is 127.0.0.1: it names the
#: host by its reverse lookup, "localhost".  The proxy's keytab holds both.
DANTE_SERVICE = "rcmd/localhost"
#: A service the proxy has no key for: a ticket for it must be refused.
OTHER_SERVICE = "other/127.0.0.1"

_START_TIMEOUT = 10.0
_COMMAND_TIMEOUT = 30.0


def _free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (the KDC listens on both)."""
    for _ in range(20):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1 after 20 tries")


class KerberosRealm:
    """One realm, its KDC process, and helpers to make principals and tickets."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.realm = REALM
        self.port = port
        self.kdc: subprocess.Popen[bytes] | None = None
        self.krb5_conf = directory / "krb5.conf"
        self.kdc_conf = directory / "kdc.conf"
        self.keytab = directory / "socks.keytab"  # the proxy's: SERVICE only

    # -- set-up -----------------------------------------------------------

    @classmethod
    def create(cls, directory: Path) -> KerberosRealm:
        directory.mkdir(parents=True, exist_ok=True)
        realm = cls(directory, _free_port())
        realm._write_configs()
        realm._run(["kdb5_util", "-r", REALM, "create", "-s", "-W", "-P", "master-password"])
        realm._start_kdc()
        realm.add_service(SERVICE, realm.keytab)
        realm.add_service(DANTE_SERVICE, realm.keytab)
        realm.add_service(OTHER_SERVICE, directory / "other.keytab")
        return realm

    def _write_configs(self) -> None:
        d = self.directory
        # No DNS anywhere: the realm and its KDC are given, names are not
        # canonicalised, and TCP is used so one port number is enough.
        self.krb5_conf.write_text(f"""\
[libdefaults]
    default_realm = {REALM}
    dns_lookup_realm = false
    dns_lookup_kdc = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
    default_ccache_name = FILE:{d}/default.ccache
    default_keytab_name = FILE:{d}/default.keytab

[realms]
    {REALM} = {{
        kdc = 127.0.0.1:{self.port}
    }}

[domain_realm]
    127.0.0.1 = {REALM}
""")
        self.kdc_conf.write_text(f"""\
[kdcdefaults]
    kdc_listen = 127.0.0.1:{self.port}
    kdc_tcp_listen = 127.0.0.1:{self.port}

[realms]
    {REALM} = {{
        database_name = {d}/principal
        key_stash_file = {d}/stash
        acl_file = {d}/kadm5.acl
        kdc_listen = 127.0.0.1:{self.port}
        kdc_tcp_listen = 127.0.0.1:{self.port}
        max_life = 1h
        max_renewable_life = 1h
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }}

[logging]
    kdc = FILE:{d}/kdc.log
    admin_server = FILE:{d}/kadmin.log
""")
        (d / "kadm5.acl").write_text("")

    def env(self, ccache: Path | None = None) -> dict[str, str]:
        """What a process needs to use this realm (and a given credential cache)."""
        env = {
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5_KDC_PROFILE": str(self.kdc_conf),
            # Replay caches in the realm's directory, not the machine's /var/tmp.
            "KRB5RCACHEDIR": str(self.directory),
        }
        if ccache is not None:
            env["KRB5CCNAME"] = f"FILE:{ccache}"
        return env

    def _run(self, argv: list[str], extra_env: dict[str, str] | None = None) -> str:
        env = {**os.environ, **self.env(), **(extra_env or {})}
        done = subprocess.run(argv, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=_COMMAND_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")
        return done.stdout

    def _start_kdc(self) -> None:
        log = open(self.directory / "krb5kdc.out", "wb")
        with log:
            self.kdc = subprocess.Popen(
                ["krb5kdc", "-n", "-r", REALM, "-P", str(self.directory / "krb5kdc.pid")],
                env={**os.environ, **self.env()}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self.kdc.poll() is not None:
                raise RuntimeError(f"krb5kdc exited with {self.kdc.returncode}: "
                                   f"{(self.directory / 'krb5kdc.out').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"krb5kdc not listening on 127.0.0.1:{self.port} "
                                       f"within {_START_TIMEOUT} s") from None
                time.sleep(0.05)

    def kadmin(self, query: str) -> str:
        return self._run(["kadmin.local", "-r", REALM, "-q", query])

    def add_service(self, name: str, keytab: Path) -> None:
        """A service principal with a random key, exported to ``keytab``."""
        self.kadmin(f"addprinc -randkey {name}")
        self.kadmin(f"ktadd -k {keytab} {name}")

    def add_user(self, name: str) -> Path:
        """A user principal with a random key; returns a keytab to kinit with."""
        keytab = self.directory / f"{name}.keytab"
        self.kadmin(f"addprinc -randkey {name}")
        self.kadmin(f"ktadd -k {keytab} {name}")
        return keytab

    def kinit(self, name: str, keytab: Path, ccache: Path) -> Path:
        """A ticket-granting ticket for ``name`` in the cache ``ccache``."""
        self._run(["kinit", "-k", "-t", str(keytab), "-c", f"FILE:{ccache}", name])
        return ccache

    def close(self) -> None:
        kdc, self.kdc = self.kdc, None
        if kdc is not None:
            terminate(kdc)
