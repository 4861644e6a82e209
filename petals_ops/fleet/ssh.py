"""SSH to fleet hosts (fabric/paramiko) with checked host keys, quoted commands, and the Docker API over it.

- Host keys are checked against known_hosts (``RejectPolicy``); ``accept_new_host_keys`` trusts a host seen
  for the first time and appends its key to the known_hosts file (never replaces a changed key).
- Remote commands are argv lists joined with :func:`shlex.join`; scripts are constants that receive their
  arguments as positional parameters (``sh -c SCRIPT sh ARG...``), so no name or value can inject shell.
- The Docker SDK talks to the host's engine through the same authenticated SSH transport
  (``docker system dial-stdio`` on the host, like ``docker -H ssh://``), so host-key checking applies to it.

fabric, paramiko and docker are imported inside functions: ``petals-ops --help`` must stay fast.
"""

from __future__ import annotations

import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from petals_ops.util.errors import InputError, OpsError, one_line
from petals_ops.util.fsutil import why_not_a_file
from petals_ops.fleet.schema import HostSpec, Inventory

DEFAULT_SSH_CONFIG = "~/.ssh/config"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


class HostError(OpsError):
    """A failure confined to one host (unreachable, refused, command failed); the others go on."""


@dataclass(frozen=True)
class SSHOptions:
    ssh_config: str | None = None
    known_hosts: str | None = None
    accept_new_host_keys: bool = False
    connect_timeout: float = 10.0

    @classmethod
    def from_inventory(cls, inv: Inventory, *, accept_new_host_keys: bool = False,
                       ssh_config: str | None = None, known_hosts: str | None = None) -> "SSHOptions":
        return cls(
            ssh_config=ssh_config or os.environ.get("PETALS_OPS_SSH_CONFIG") or inv.ssh_config,
            known_hosts=known_hosts or os.environ.get("PETALS_OPS_KNOWN_HOSTS") or inv.known_hosts,
            accept_new_host_keys=accept_new_host_keys,
        )

    def ssh_config_path(self) -> Path | None:
        path = Path(self.ssh_config or DEFAULT_SSH_CONFIG).expanduser()
        why = why_not_a_file(path) if self.ssh_config else None
        if why is not None:
            raise InputError(f"ssh config {path} {why}",
                             fix="fix ssh_config in the inventory or PETALS_OPS_SSH_CONFIG")
        return path if path.is_file() else None

    def parsed_config(self):
        """The ssh config as a paramiko ``SSHConfig`` (None when there is none); a bad file is an
        InputError."""
        import paramiko

        path = self.ssh_config_path()
        if path is None:
            return None
        try:
            return paramiko.SSHConfig.from_path(str(path))
        except (paramiko.ssh_exception.ConfigParseError, OSError, UnicodeDecodeError) as e:
            raise InputError(f"ssh config {path} cannot be read ({one_line(e, 200)})",
                             fix="fix that file, or point ssh_config / PETALS_OPS_SSH_CONFIG "
                                 "elsewhere") from None

    def lookup(self, alias: str) -> dict:
        config = self.parsed_config()
        return {"hostname": alias} if config is None else config.lookup(alias)

    def is_alias(self, name: str) -> bool:
        config = self.parsed_config()
        return config is not None and name in config.get_hostnames()

    def known_hosts_for(self, alias: str) -> Path:
        if self.known_hosts:
            return Path(self.known_hosts).expanduser()
        files = self.lookup(alias).get("userknownhostsfile")
        if files:
            return Path(str(files).split()[0]).expanduser()
        return Path(DEFAULT_KNOWN_HOSTS).expanduser()


def select_hosts(inv: Inventory, hosts: Sequence[str] | str | None, opts: SSHOptions, *,
                 given_as: str = "--hosts:") -> list[str]:
    """``--hosts a,b``: names from the inventory, or ssh-config aliases; default: every inventory host."""
    if isinstance(hosts, str):
        hosts = [hosts]
    names = [h.strip() for v in (hosts or ()) for h in v.split(",") if h.strip()]
    # --hosts '' or ',,,' must not widen to every host (down would stop all)
    if hosts is not None and not names:
        raise InputError(f"--hosts {','.join(hosts)!r} names no host",
                         fix="name them (--hosts a10-1,a10-2), "
                             "or leave --hosts out to act on every inventory host")
    if not names:
        if not inv.hosts:
            raise InputError(
                f"no hosts: the inventory {inv.source or '(none found: ./petals-ops.yaml)'} lists none "
                "and --hosts was not given",
                fix="pass --hosts a10-1,a10-2 or add hosts: to the inventory",
            )
        return list(inv.hosts)
    for name in names:
        from petals_ops.fleet.schema import HOST_NAME_RE

        if not HOST_NAME_RE.match(name):
            raise InputError(f"{given_as} {name!r} is not a host name",
                             fix="use names like a10-1 (letters, digits, . _ -)")
        if name not in inv.hosts and not opts.is_alias(name):
            raise InputError(
                f"{given_as} {name} is neither in the inventory ({inv.source or 'none'}) "
                f"nor an alias in the ssh config ({opts.ssh_config_path() or 'none'})",
                fix="add it under hosts: in the inventory, or a 'Host NAME' block to the ssh config",
            )
    return list(dict.fromkeys(names))


def _tofu_policy(known_hosts: Path):
    import paramiko

    class TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
        """Accept a host never seen before and record its key (a changed key still fails:
        BadHostKeyException)."""

        def missing_host_key(self, client, hostname, key):
            client.get_host_keys().add(hostname, key.get_name(), key)
            known_hosts.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")

    return TrustOnFirstUse()


def _hops(conn) -> list:
    """``conn`` and its ProxyJump gateways (fabric Connections; a ProxyCommand string is not one)."""
    import fabric

    hops = []
    while isinstance(conn, fabric.Connection):
        hops.append(conn)
        conn = conn.gateway
    return hops


def _close(conn) -> None:
    """Close ``conn`` and its ProxyJump hops (fabric's close leaves the gateways open)."""
    for hop in _hops(conn):
        try:
            hop.close()
            hop.client.close()  # also when the transport never became active
        except Exception:
            pass


class HostSession:
    """One host: an SSH connection (opened on first use), commands, files and a Docker client over it."""

    def __init__(self, name: str, spec: HostSpec, opts: SSHOptions):
        self.name, self.spec, self.opts = name, spec, opts
        self._conn = None
        self._docker = None

    # -- connection -------------------------------------------------------------------------------
    @property
    def conn(self):
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self):
        import logging

        import fabric
        import paramiko

        # no per-channel INFO lines on stderr (never lower the CLI's level)
        paramiko_log = logging.getLogger("paramiko")
        paramiko_log.setLevel(max(paramiko_log.level, logging.WARNING))
        ssh_config = self.opts.parsed_config()  # parsed here, so a broken file is an InputError
        config = fabric.Config(ssh_config=ssh_config) if ssh_config is not None else fabric.Config()
        config.run.in_stream = False
        connect_kwargs = {"banner_timeout": self.opts.connect_timeout,
                          "auth_timeout": self.opts.connect_timeout, "allow_agent": False}
        if self.spec.key:
            connect_kwargs["key_filename"] = [str(Path(self.spec.key).expanduser())]
        conn = fabric.Connection(
            self.spec.address or self.name, user=self.spec.user, port=self.spec.port, config=config,
            connect_timeout=self.opts.connect_timeout, connect_kwargs=connect_kwargs,
        )
        known_hosts = self.opts.known_hosts_for(self.name)
        # The target and every ProxyJump hop (fabric gives each hop its own client, with AutoAddPolicy).
        for hop in _hops(conn):
            if known_hosts.is_file():
                hop.client.load_host_keys(str(known_hosts))
                # paramiko would rewrite the whole file on AutoAdd; we append ourselves instead.
                hop.client._host_keys_filename = None
            hop.client.set_missing_host_key_policy(
                _tofu_policy(known_hosts) if self.opts.accept_new_host_keys else paramiko.RejectPolicy()
            )
        where = f"{conn.user}@{conn.host}:{conn.port}"
        try:
            try:
                conn.open()
            except BaseException:
                _close(conn)  # a failed connect leaves transports (and hops) open otherwise
                raise
        except paramiko.BadHostKeyException:
            raise HostError(
                f"{self.name}: the SSH host key of {conn.host}:{conn.port} does NOT match {known_hosts} "
                "(the machine was reinstalled, or someone is in the middle)",
                fix="verify the new key out of band, then remove the old line with ssh-keygen -R",
            ) from None
        except paramiko.AuthenticationException:
            raise HostError(f"{self.name}: SSH authentication failed for {where}",
                            fix="check user and key (hosts.NAME.user/key or the ssh config)") from None
        except paramiko.SSHException as e:
            if "known_hosts" in str(e):
                raise HostError(
                    f"{self.name}: the SSH host key of {conn.host}:{conn.port} is not in {known_hosts}",
                    fix="add it (ssh-keyscan, or ssh once) "
                        "or pass --accept-new-host-keys to trust it on first use",
                ) from None
            raise HostError(f"{self.name}: SSH to {where} failed ({one_line(e, 200)})",
                            fix="check sshd on the host") from None
        except socket.gaierror:
            raise HostError(f"{self.name}: cannot resolve {conn.host}",
                            fix="check the address, or the alias in the ssh config") from None
        except TimeoutError:
            raise HostError(f"{self.name}: timed out connecting to {where}",
                            fix="check the host is up and the port open") from None
        except (paramiko.ssh_exception.NoValidConnectionsError, OSError) as e:
            causes = list(getattr(e, "errors", {}).values()) or [e]
            refused = all(isinstance(c, ConnectionRefusedError) or getattr(c, "errno", None) == 111
                          for c in causes)
            reason = "connection refused" if refused else one_line(e, 200)
            raise HostError(f"{self.name}: cannot connect to {where} ({reason})",
                            fix="check that the host is up and sshd listens on that port") from None
        return conn

    def close(self) -> None:
        if self._docker is not None:
            try:
                self._docker.close()
            except Exception:
                pass
            self._docker = None
        if self._conn is not None:
            _close(self._conn)
            self._conn = None

    def __enter__(self) -> "HostSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- commands ---------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, sudo: bool = False, timeout: float = 120, check: bool = False):
        """Run ``argv`` (quoted with shlex.join) on the host; returns fabric's Result (``.ok``,
        ``.stdout``...)."""
        command = shlex.join([str(a) for a in argv])
        if sudo and self.spec.sudo:
            command = "sudo -n " + command
        try:
            result = self.conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
        except HostError:
            raise
        except Exception as e:  # CommandTimedOut, a dropped connection
            raise HostError(f"{self.name}: {argv[0]} failed ({one_line(e, 200)})",
                            fix="check the host") from None
        if check and not result.ok:
            raise HostError(f"{self.name}: {' '.join(argv[:3])} exited {result.exited} "
                            f"({one_line(result.stderr or result.stdout, 200)})",
                            fix="run it by hand on the host to see why")
        return result

    def script(self, script: str, *args: str, sudo: bool = False, timeout: float = 120, check: bool = False):
        """Run a constant shell ``script`` with ``args`` as $1, $2, ... (never interpolated into the text)."""
        return self.run(["sh", "-c", script, "sh", *args], sudo=sudo, timeout=timeout, check=check)

    def read_file(self, path: str) -> bytes | None:
        import io

        buf = io.BytesIO()
        try:
            self.conn.get(path, local=buf)
        except FileNotFoundError:
            return None
        except OSError as e:
            if getattr(e, "errno", None) == 2:
                return None
            raise HostError(f"{self.name}: cannot read {path} ({one_line(e, 200)})",
                            fix="check permissions") from None
        return buf.getvalue()

    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        import io

        self.conn.put(io.BytesIO(data), remote=path)
        self.conn.sftp().chmod(path, mode)

    # -- docker -----------------------------------------------------------------------------------
    def docker(self, timeout: float | None = 120):
        """A Docker SDK client for the host's engine, over this SSH connection (cached)."""
        if self._docker is None or timeout != 120:
            client = docker_over_ssh(self, timeout=timeout)
            if timeout != 120:
                return client
            self._docker = client
        return self._docker


def docker_over_ssh(session: HostSession, timeout: float | None = 120):
    from docker.transport.sshconn import SSHHTTPAdapter

    import docker

    transport_client = session.conn.client  # paramiko SSHClient, host key already verified

    class _Adapter(SSHHTTPAdapter):
        """docker-py's SSH adapter, but on our authenticated paramiko client instead of its own."""

        def _create_paramiko_client(self, base_url):
            self.ssh_client = transport_client
            self.ssh_params = {}

        def _connect(self):
            if self.ssh_client.get_transport() is None or not self.ssh_client.get_transport().is_active():
                raise HostError(f"{session.name}: the SSH connection dropped", fix="run the command again")

    try:
        # use_ssh_client=True builds a placeholder adapter without connecting; ours replaces it.
        client = docker.DockerClient(base_url=f"ssh://{session.name}", version="1.41", timeout=timeout,
                                     use_ssh_client=True)
        adapter = _Adapter(f"ssh://{session.name}", timeout=timeout, max_pool_size=4)
        client.api.mount("http+docker://ssh", adapter)
        client.api._custom_adapter = adapter
        client.api._version = client.api._retrieve_server_version()
    except HostError:
        raise
    except Exception as e:
        raise HostError(f"{session.name}: cannot reach Docker over SSH ({one_line(e, 200)})",
                        fix="check 'docker info' works for the SSH user there "
                            "(petals-ops hosts check)") from None
    return client
