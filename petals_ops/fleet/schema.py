"""The fleet inventory's schema: typed, validated values (hosts, GPUs, the server spec and its overrides).

Every string field is checked for its kind (an address, a user, a path, a name, an image, an environment
variable name, a size...), so a typo or a hostile value is refused at load time with one line naming the
field and the host, never later on a host's command line or in a Docker call. The YAML file and its line
numbers are :mod:`petals_ops.fleet.inventory`'s concern. Nothing here imports more than pydantic.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Callable, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from petals_ops.lab.target import is_peer_multiaddr
from petals_ops.util.errors import InputError, looks_secret

# The official image, pinned: ':main' is rebuilt from every push, so a fleet must name a tag or a digest.
DEFAULT_IMAGE = "learningathome/petals:2.2.0"
OFFICIAL_COMMAND = ["python", "-m", "petals.cli.run_server"]
A10_MEMORY_BYTES = 24_146_608_128  # what NVML reports for an NVIDIA A10 (22.49 GiB)
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
BLOCK_RANGE_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
# petals run_server flags that take the HF token
TOKEN_FLAGS = ("--token", "--use_auth_token", "--use-auth-token")


# -- kinds of strings ---------------------------------------------------------------------------------
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_DNS_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DNS_RE = re.compile(rf"^{_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?$")
_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_VOLUME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_IMAGE_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# Docker's reference grammar: [registry[:port]/]path[:tag][@digest]
_IMAGE_RE = re.compile(rf"^(?:[A-Za-z0-9.-]+(?::[0-9]{{1,5}})?/)?{_IMAGE_PART}(?:/{_IMAGE_PART})*"
                       r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")
_SIZE_RE = re.compile(r"^\d+(?:\.\d+)?\s*(?:[KMGTP]i?B?|B)?$", re.IGNORECASE)
THROUGHPUT_WORDS = ("auto", "eval", "dry_run")  # what run_server's --throughput takes besides a number
MAX_PATH = 4096
MAX_TEXT = 4096


def _matching(pattern: re.Pattern, problem: str) -> Callable[[str], str]:
    """A check that a value matches ``pattern`` (else ``ValueError(problem)``, named by the caller)."""

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(problem)
        return value

    return check


def _no_control(value: str, what: str) -> str:
    if _CONTROL_RE.search(value):
        raise ValueError(f"{what} holds a control character (a newline, tab or escape)")
    return value


def _path(value: str) -> str:
    if not value.strip() or len(value) > MAX_PATH:
        raise ValueError(f"is not a path (empty, or longer than {MAX_PATH} characters)")
    return _no_control(value, "the path")


def _absolute_path(value: str) -> str:
    if not _path(value).startswith("/"):
        raise ValueError("must be an absolute path inside the container (starting with /)")
    return value


def _address(value: str) -> str:
    """An IP address (IPv6 with or without brackets) or a DNS name / ssh-config alias."""
    try:
        ipaddress.ip_address(value.strip("[]"))
        return value
    except ValueError:
        pass
    if len(value) > 253 or not _DNS_RE.match(value):
        raise ValueError("is not an IP address or a host name (letters, digits, '-' and '.')")
    return value


def _ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("is not an IP address (e.g. 0.0.0.0, 203.0.113.7 or ::)") from None
    return value


_user = _matching(_USER_RE, "is not a user name (letters, digits, '_', '.', '-'; at most 32)")


_env_name = _matching(_ENV_NAME_RE, "is not an environment variable name (letters, digits and '_', "
                                    "not starting with a digit)")


def _image(value: str) -> str:
    if len(value) > 255 or not _IMAGE_RE.match(value):
        raise ValueError("is not a Docker image name (e.g. learningathome/petals:2.2.0 or "
                         "registry.example.org/petals@sha256:...)")
    return value


def _model(value: str) -> str:
    """A Hugging Face repo id (org/name) or a local directory (absolute, ./ or ~)."""
    if value.startswith(("/", "./", "../", "~")):
        return _path(value)
    if not _REPO_ID_RE.match(value):
        raise ValueError("is not a model (a Hugging Face repo id like bigscience/bloom, or a directory)")
    return value


_dht_prefix = _matching(_PREFIX_RE, "is not a DHT prefix (letters, digits, '.', '_', '-', '/'; at most 128)")


_volume_name = _matching(_VOLUME_RE, "is not a Docker volume name (letters, digits, '_', '.', '-')")


_container_name = _matching(HOST_NAME_RE, "may hold letters, digits, '.', '_' and '-' only (at most 63)")


def _text(value: str) -> str:
    """A free-form value (an argument, an environment value, an announced name): printable, bounded."""
    if len(value) > MAX_TEXT:
        raise ValueError(f"is longer than {MAX_TEXT} characters")
    return _no_control(value, "the value")


def _public_name(value: str) -> str:
    if not value.strip() or len(value) > 128:
        raise ValueError("must be 1 to 128 characters (other peers show it)")
    return _no_control(value, "the name")


def _size(value: str) -> str:
    if not _SIZE_RE.match(value.strip()):
        raise ValueError("is not a size (e.g. 120GiB or 500GB)")
    return value


def _throughput(value):
    if isinstance(value, str) and value not in THROUGHPUT_WORDS:
        try:
            float(value)
        except ValueError:
            raise ValueError(f"is not a number or one of {', '.join(THROUGHPUT_WORDS)}") from None
    return value


Path_ = Annotated[str, AfterValidator(_path)]
AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
Address = Annotated[str, AfterValidator(_address)]
IPAddress = Annotated[str, AfterValidator(_ip)]
UserName = Annotated[str, AfterValidator(_user)]
EnvName = Annotated[str, AfterValidator(_env_name)]
ImageName = Annotated[str, AfterValidator(_image)]
ModelName = Annotated[str, AfterValidator(_model)]
DhtPrefix = Annotated[str, AfterValidator(_dht_prefix)]
VolumeName = Annotated[str, AfterValidator(_volume_name)]
ContainerName = Annotated[str, AfterValidator(_container_name)]
Text = Annotated[str, AfterValidator(_text)]
PublicName = Annotated[str, AfterValidator(_public_name)]
Size = Annotated[str, AfterValidator(_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TokenSource(_Strict):
    """Where the Hugging Face token comes from: an environment variable or a file; never argv or YAML."""

    env: EnvName | None = None
    file: Path_ | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_the_token(cls, data):
        """``hf_token: hf_...`` puts the secret in the file: refuse it without echoing it."""
        if isinstance(data, str):
            raise ValueError("must say where the token is ({env: VAR} or {file: PATH}), not hold the token")
        if isinstance(data, dict) and isinstance(data.get("env"), str) and looks_secret(data["env"]):
            raise ValueError("env: takes the name of an environment variable holding the token, "
                             "not the token")
        return data

    @model_validator(mode="after")
    def _one(self) -> "TokenSource":
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env: VAR or file: PATH")
        return self

    def describe(self) -> str:
        return f"env {self.env}" if self.env else f"file {self.file}"

    def read(self) -> str:
        if self.env:
            value = os.environ.get(self.env)
            if not value:
                raise InputError(f"hf_token: environment variable {self.env} is empty or unset",
                                 fix=f"export {self.env}=... before running petals-ops")
            return value.strip()
        path = Path(self.file).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as e:
            raise InputError(f"hf_token: cannot read token file {path} ({e.strerror})",
                             fix="check the path") from e
        if not value:
            raise InputError(f"hf_token: token file {path} is empty", fix="write the token into it")
        return value


class ServerSpec(_Strict):
    """What each server container runs. Every field can be overridden per host under ``hosts.NAME.server``."""

    image: ImageName = DEFAULT_IMAGE
    command: list[Text] = Field(default_factory=lambda: list(OFFICIAL_COMMAND))
    model: ModelName = "bigscience/bloom"
    dht_prefix: DhtPrefix | None = None
    device: Literal["cuda", "cpu"] = "cuda"
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = None
    quant_type: Literal["none", "int8", "nf4"] | None = None
    num_blocks: int | None = Field(default=None, ge=1)
    block_indices: list[str] | None = None  # one "start:end" per server on the host (per GPU)
    attn_cache_tokens: int | None = Field(default=None, ge=1)
    inference_max_length: int | None = Field(default=None, ge=1)
    max_disk_space: Size | None = None
    throughput: Annotated[str | float, AfterValidator(_throughput)] | None = None
    port: int = Field(default=31330, ge=1, le=65535)  # server i on a host uses port + i
    listen_address: IPAddress = "0.0.0.0"
    public_ip: IPAddress | None = None  # announced address (use when behind NAT or listening on 0.0.0.0)
    public_name: PublicName | None = None
    initial_peers: list[str] = Field(default_factory=list)
    new_swarm: bool = False
    identity_dir: Path_ = ".petals-ops/identity"  # on the host; one identity file per server
    cache_volume: VolumeName = "petals-cache"
    cache_mount: AbsolutePath = "/cache"
    volumes: list[str] = Field(default_factory=list)  # extra binds "SRC:DST[:ro]"
    environment: dict[EnvName, Text] = Field(default_factory=dict)  # non-secret environment
    extra_args: list[Text] = Field(default_factory=list)
    hf_token: TokenSource | None = None
    restart_policy: Literal["unless-stopped", "always", "on-failure", "no"] = "unless-stopped"
    container_prefix: ContainerName = "petals-server"

    @field_validator("*")
    @classmethod
    def _no_secrets(cls, value, info):
        """A token belongs under hf_token (read at use from a variable or a file). Anywhere else plan would
        print it, argv would show it to the host's users, or public_name would announce it to the swarm."""
        if info.field_name != "hf_token" and any(looks_secret(v) for v in _strings(value)):
            raise ValueError("holds what looks like a Hugging Face token (hf_...); "
                             "give the token only as hf_token: {env: VAR} or {file: PATH}")
        return value

    @field_validator("block_indices")
    @classmethod
    def _ranges(cls, value):
        if value is None:
            return value
        normalised = []
        for r in value:
            m = BLOCK_RANGE_RE.match(r)
            if not m or int(m.group(1)) >= int(m.group(2)):
                raise ValueError(f"block range {r!r} is not start:end with start < end (e.g. 0:14)")
            # " 0 : 14" -> "0:14", as the DHT shows it
            normalised.append(f"{int(m.group(1))}:{int(m.group(2))}")
        return normalised

    @field_validator("command", "extra_args")
    @classmethod
    def _no_token_args(cls, value):
        for a in value:
            flag = a.split("=", 1)[0]
            if flag in TOKEN_FLAGS or a.startswith("hf_"):
                raise ValueError(f"{'a token' if a.startswith('hf_') else flag} must not be on the "
                                 "command line (other users of the host can read it); "
                                 "use hf_token: {env: VAR}")
        return value

    @field_validator("initial_peers")
    @classmethod
    def _peers(cls, value):
        for p in value:
            if not is_peer_multiaddr(p):
                raise ValueError(f"initial peer {p[:200]!r} is not a multiaddr "
                                 "/ip4/HOST/tcp/PORT/p2p/PEER_ID")
        return value

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value):
        for v in value:
            parts = v.split(":")
            if (len(parts) not in (2, 3) or not all(parts[:2])
                    or (len(parts) == 3 and parts[2] not in ("ro", "rw"))):
                raise ValueError(f"volume {v[:200]!r} is not SRC:DST or SRC:DST:ro")
            src, dst = parts[:2]
            if src.startswith("/"):
                _path(src)
            elif not _VOLUME_RE.match(src):
                raise ValueError(f"volume {v[:200]!r}: SRC is neither an absolute host path "
                                 "nor a volume name")
            if not dst.startswith("/") or _CONTROL_RE.search(dst):
                raise ValueError(f"volume {v[:200]!r}: DST must be an absolute path in the container")
        return value

    @field_validator("environment")
    @classmethod
    def _env(cls, value):
        for k in value:
            if "TOKEN" in k.upper() or "SECRET" in k.upper():
                raise ValueError(f"environment variable {k} looks like a secret; "
                                 "use hf_token: {env: VAR} instead")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ServerSpec":
        if self.num_blocks is not None and self.block_indices is not None:
            raise ValueError("num_blocks and block_indices exclude each other (Petals takes one of them)")
        if self.new_swarm and self.initial_peers:
            raise ValueError("new_swarm and initial_peers exclude each other")
        if not self.command:
            raise ValueError("command is empty")
        return self


def _strings(value) -> list[str]:
    """The strings in a field's value (itself, a list's items, a dict's keys and values)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    if isinstance(value, dict):
        return [v for kv in value.items() for v in kv if isinstance(v, str)]
    return []


# Per-host overrides: the same fields as ServerSpec, all optional (checked combined with the defaults; each
# value's kind is checked here already, so its error names the host).
ServerOverrides = create_model(
    "ServerOverrides",
    __base__=_Strict,
    **{name: (f.annotation | None, None) for name, f in ServerSpec.model_fields.items()},
)


class HostSpec(_Strict):
    """One rented machine. ``address`` defaults to the host's name, which may be an ssh-config alias."""

    address: Address | None = None
    user: UserName | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    key: Path_ | None = None  # private key file (never the key itself)
    sudo: bool = False  # use sudo for docker/provision commands
    gpus: int = Field(default=1, ge=0, le=16)
    gpu_memory_bytes: int = Field(default=A10_MEMORY_BYTES, ge=1)
    server: ServerOverrides = Field(default_factory=ServerOverrides)  # type: ignore[valid-type]
    # a hot spare: runs no server of its own; `watch` starts the range of a host that is gone on it
    spare: bool = False

    @model_validator(mode="after")
    def _spare_has_no_range(self) -> "HostSpec":
        if self.spare and (self.server.block_indices is not None or self.server.num_blocks is not None):
            raise ValueError("a spare host serves no range of its own (watch gives it the range of a host "
                             "that is gone): remove its server.block_indices / num_blocks")
        return self


class Inventory(_Strict):
    ssh_config: Path_ | None = None
    known_hosts: Path_ | None = None
    server: ServerSpec = Field(default_factory=ServerSpec)
    hosts: dict[str, HostSpec] = Field(default_factory=dict)
    source: str | None = Field(default=None, exclude=True)

    @field_validator("hosts")
    @classmethod
    def _names(cls, value):
        for name in value:
            if not HOST_NAME_RE.match(name):
                raise ValueError(f"host name {name[:80]!r} may hold letters, digits, '.', '_' and '-' only")
        return value

    def server_for(self, host: str, *, _lines: dict | None = None) -> ServerSpec:
        """The effective server spec of ``host``: defaults, then its overrides (validated together)."""
        base = self.server.model_dump(exclude_unset=False)
        spec = self.hosts.get(host)
        overrides = spec.server.model_dump(exclude_unset=True) if spec is not None else {}
        base.update(overrides)
        try:
            return ServerSpec.model_validate(base)
        except ValidationError as e:
            field = e.errors()[0]["loc"][:1]
            prefix = ("hosts", host, "server") if field and field[0] in overrides else ("server",)
            raise InputError(
                f"inventory {self.source or '(none)'}: {first_error(e, _lines, prefix)}",
                fix="see deploy/petals-ops.example.yaml for the fields",
            ) from None

    def host(self, name: str) -> HostSpec:
        return self.hosts.get(name) or HostSpec()


def first_error(e: ValidationError, lines: dict | None = None, prefix: tuple = ()) -> str:
    """pydantic's first error as one line: the field's path (``hosts.a10-1.user``), its line in the file
    when known, the reason and the value given (shortened, control characters escaped)."""
    err = e.errors()[0]
    loc = prefix + tuple(p for p in err["loc"] if p not in ("function-after",))
    path = ".".join(str(p) for p in loc if not str(p).startswith("function-")) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    where = ""
    if lines:
        for n in range(len(loc), 0, -1):
            if loc[:n] in lines:
                where = f" (line {lines[loc[:n]]})"
                break
    got = err.get("input")
    shown = ("" if err["type"] in ("extra_forbidden", "missing") or isinstance(got, (dict, list))
             or looks_secret(str(got)) else f", got {_short_repr(got)}")
    return f"{path}{where}: {msg}{shown}"


def _short_repr(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def token_digest(token: str | None) -> str | None:
    """A digest of the token for the config hash (so a new token recreates the container); never the token."""
    return None if token is None else hashlib.sha256(b"petals-ops-token:" + token.encode()).hexdigest()[:16]
