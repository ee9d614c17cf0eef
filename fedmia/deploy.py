"""Flower's deployment engine on one machine: a SuperLink, one SuperNode per client, `flwr run`.

The same app as the simulation — only the transport changes: each SuperNode is a separate
process (one per hospital, on one machine here, on many in a real demo) that learns its
partition from `--node-config`. `fedmia deploy-local` and the loopback test use this module;
README's "multi-machine demo" runs the same commands by hand, and docker/compose.yml wraps them
in containers. Every process started here is stopped here, by PID.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fedmia.processes import descendants, terminate

REPO = Path(__file__).resolve().parents[1]
TASK_POLL_INTERVAL = "0.1"  # seconds; docker/app.Dockerfile bakes the same (tested)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@dataclass
class LocalDeployment:
    clients: int
    workdir: Path
    tls_dir: Path | None = None  # holds ca.crt, server.pem, server.key when TLS is on
    auth: bool = False  # SuperNode authentication: only registered public keys may join (needs TLS)
    superlink_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)
    # one `--node-config` per SuperNode; default: Flower's partition-id/num-partitions (a
    # multi-site audit gives each its site and its own folder: `site_node_configs`)
    node_configs: list[str] | None = None
    # a SuperNode's own environment, by partition, where it differs (a site with other packages)
    node_envs: dict[int, dict] = field(default_factory=dict)

    def __post_init__(self):
        # Absolute: every Flower process runs with `workdir` as its cwd, where a relative path
        # given on the command line (the default `runs/deploy`) no longer points at the certificates.
        self.workdir = Path(self.workdir).resolve()
        self.tls_dir = Path(self.tls_dir).resolve() if self.tls_dir is not None else None
        if self.auth and self.tls_dir is None:
            raise ValueError("SuperNode authentication needs TLS: the installed SuperLink refuses "
                             "--enable-supernode-auth with --insecure")

    @property
    def env(self) -> dict:
        return {**os.environ, "FLWR_HOME": str(self.workdir / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                # the SuperExec a SuperNode spawns polls for a message's task every 1 s by default
                # before it starts the ClientApp process: a supported setting (0.01-60 s)
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": TASK_POLL_INTERVAL,
                "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}

    def _security(self, role: str) -> list[str]:
        if self.tls_dir is None:
            return ["--insecure"]
        if role == "superlink":
            return ["--ssl-ca-certfile", str(self.tls_dir / "ca.crt"), "--ssl-certfile",
                    str(self.tls_dir / "server.pem"), "--ssl-keyfile", str(self.tls_dir / "server.key")]
        return ["--root-certificates", str(self.tls_dir / "ca.crt")]

    def _spawn(self, args: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
        out = open(self.workdir / log, "w")
        proc = subprocess.Popen(args, cwd=self.workdir, env=env or self.env, stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(proc)
        return proc

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "flwr-home").mkdir(exist_ok=True)
        self._spawn(self.superlink_command(), "superlink.log")
        self._wait_for_port(self.superlink_port)
        self.write_connection()
        for k in range(self.clients):
            key = None
            if self.auth:  # the operator registers each hospital's public key before it joins
                key = supernode_keys(self.workdir / "keys", f"supernode-{k}")
                self.register(key.with_suffix(".pub"))
            self.spawn_supernode(k, key, env=self.node_envs.get(k))

    def node_config(self, partition: int) -> str:
        if self.node_configs is not None:
            return self.node_configs[partition]
        return f"partition-id={partition} num-partitions={self.clients}"

    def superlink_command(self) -> list[str]:
        """The SuperLink's command line (docker/compose.yml must use the same flags: tested).
        No `--database`: Flower then keeps its state in memory. With a SQLite file, the Fleet,
        Control and ServerAppIo threads write one database with a 5 s busy timeout (flwr 1.41
        `supercore/constant.py`); on 2 cores saturated by training ClientApps a write waited
        longer, the SuperLink answered "database is locked", the log stream of `flwr run` ended
        and the multi-site test failed (2026-12-03). A run does not outlive its SuperLink, so the
        file kept nothing we use."""
        return [_bin("flower-superlink"), *self._security("superlink"), "--host", "127.0.0.1",
                "--port", str(self.superlink_port),
                "--disable-runtime-dependency-installation", *(["--enable-supernode-auth"] if self.auth else [])]

    def supernode_command(self, partition: int, private_key: Path | None = None) -> list[str]:
        auth = ["--auth-supernode-private-key", str(private_key)] if private_key else []
        return [_bin("flower-supernode"), *self._security("supernode"), *auth,
                "--superlink", f"127.0.0.1:{self.superlink_port}", "--node-config", self.node_config(partition),
                "--host", "127.0.0.1", "--port", str(free_port())]

    def spawn_supernode(self, partition: int, private_key: Path | None = None, log: str | None = None,
                        env: dict | None = None) -> subprocess.Popen:
        """`env`: the SuperNode's environment, if not the deployment's (a site with other packages)."""
        return self._spawn(self.supernode_command(partition, private_key), log or f"supernode-{partition}.log", env)

    def register(self, public_key: Path) -> None:
        """`flwr supernode register`: the SuperLink's Control API learns one SuperNode's key."""
        result = subprocess.run([_bin("flwr"), "supernode", "register", str(public_key), "local-deploy"],
                                cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"registering {public_key} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")

    def write_connection(self) -> None:
        """`flwr run . local-deploy` finds the SuperLink through $FLWR_HOME/config.toml."""
        (self.workdir / "flwr-home" / "config.toml").write_text(connection_config(
            f"127.0.0.1:{self.superlink_port}", None if self.tls_dir is None else self.tls_dir / "ca.crt",
            "local-deploy"))

    def _wait_for_port(self, port: int, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"a Flower process exited early; see the logs in {self.workdir}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"SuperLink did not listen on 127.0.0.1:{port} within {timeout:.0f} s")

    def run(self, scenario, out_dir: Path, timeout: float = 600, app: Path | None = None,
            extra: str = "") -> subprocess.CompletedProcess:
        return flwr_run(scenario, out_dir, "local-deploy", self.env, self.workdir, timeout, app, extra)

    def stop(self) -> None:
        """Stop every process started here and everything they started (SuperExec, ServerApp and
        ClientApp processes, which may sit in sessions of their own) — by PID."""
        pids = {p.pid for p in self.processes}
        for proc in self.processes:
            pids |= descendants(proc.pid)
        terminate(pids)
        for proc in self.processes:
            proc.wait()


def flwr_run(scenario, out_dir: Path, federation: str, env: dict, cwd: Path,
             timeout: float | None = None, app: Path | None = None, extra: str = "") -> subprocess.CompletedProcess:
    """`flwr run` of this app (or of `app`: a user's app composed with fedmia's ServerApp,
    `audit_app.compose_app`; `extra`: its own run config). `scenario`: a file (its absolute path
    is sent: the ServerApp and ClientApps open it, whatever directory they were started in) or a
    `Scenario`, sent whole (for SuperNodes on other machines, which have no copy of the file).
    `out` is made absolute: the ServerApp writes it on the SuperLink's machine."""
    if isinstance(scenario, (str, Path)):
        config = f"scenario='{Path(scenario).resolve()}'"
    else:
        from fedmia.validation import encode_for_run_config

        config = f"scenario-b64='{encode_for_run_config(scenario)}'"
    config += f" out='{Path(out_dir).resolve()}'" + (f" {extra}" if extra else "")
    return subprocess.run([_bin("flwr"), "run", str(app or REPO), federation, "--stream", "--run-config", config],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def connection_config(address: str, root_certificates: Path | None, name: str = "audit") -> str:
    """The `$FLWR_HOME/config.toml` through which `flwr run . NAME` reaches a SuperLink."""
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    lines.append("insecure = true" if root_certificates is None
                 else f'root-certificates = "{Path(root_certificates).resolve()}"')
    return "\n".join(lines) + "\n"


def site_node_configs(scenario) -> list[str]:
    """Each simulated site's `--node-config` on a loopback deployment: its name and its folder,
    as a hospital's own SuperNode would be started."""
    return [f"site='{site.name}' data-path='{Path(site.path).resolve()}'" for site in scenario.data.sites]


def submit(scenario, out_dir: Path, superlink: str, root_certificates: Path | None,
           timeout: float | None = None) -> subprocess.CompletedProcess:
    """`fedmia deploy`: the auditor submits the run to a running SuperLink (its Control API)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedmia-flwr-home-") as home:
        (Path(home) / "config.toml").write_text(connection_config(superlink, root_certificates))
        env = {**os.environ, "FLWR_HOME": home, "FLWR_TELEMETRY_ENABLED": "0",
               "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
        return flwr_run(scenario, out_dir, "audit", env, Path(home), timeout)


@contextmanager
def local_deployment(clients: int, workdir: Path, tls_dir: Path | None = None, auth: bool = False,
                     node_configs: list[str] | None = None):
    deployment = LocalDeployment(clients, Path(workdir), tls_dir, auth, node_configs=node_configs)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


def self_signed_certificates(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                             days: int = 2) -> Path:
    """A throw-away CA and a server certificate for `hosts` (IP addresses or DNS names; for the
    TLS demo, the tests and the compose file — real deployments bring their own). Returns
    `folder` holding ca.crt, server.pem/.key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer, public_key, signing_key, *, ca: bool, san=None):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmia test CA")])
    ca_cert = build(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    def name(host: str):
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    server_cert = build(server_name, ca_name, server_key.public_key(), ca_key, ca=False,
                        san=[name(host) for host in hosts])
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca_cert.public_bytes(pem))
    (folder / "server.pem").write_bytes(server_cert.public_bytes(pem))
    (folder / "server.key").write_bytes(server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder


def supernode_keys(folder: Path, name: str) -> Path:
    """An ECDSA P-384 key pair in the OpenSSH formats the installed Flower reads: `folder/name`
    (private, for --auth-supernode-private-key) and `folder/name.pub` (for registration)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = folder / name
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    (folder / f"{name}.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return private


def write_credentials(folder: Path, sites: list[str], hosts: tuple[str, ...], days: int = 30) -> Path:
    """Everything a TLS + SuperNode-authenticated federation needs, in one folder: the CA and the
    SuperLink's certificate (`ca.crt`, `server.pem`, `server.key`, valid for `hosts`) and one
    key pair per site (`keys/<site>`, `keys/<site>.pub`, registered with the SuperLink before
    the site joins). `fedmia credentials` and docker/credentials.sh call this."""
    folder = Path(folder)
    self_signed_certificates(folder, hosts, days)
    for site in sites:
        supernode_keys(folder / "keys", site)
    return folder
